"""The seed design's service on our int8 graph: FastAPI, one forward pass per request, no batching.

It differs from bench/naive_server.py only in what runs a request (our predictor on the int8 ONNX graph instead of
a transformers pipeline on PyTorch), and from `ner-pipeline serve` only in scheduling (each request runs alone, in
FastAPI's thread pool, as it arrives), so bench/serve_load.py can tell what the graph buys from what batching buys.

python bench/naive_int8_server.py MODEL_DIR ONNX_DIR PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from ner_pipeline.predict import Predictor


class Request(BaseModel):
    texts: list[str]


def make_app(model_dir: str, onnx_dir: str) -> FastAPI:
    app = FastAPI()
    predictor = Predictor.load(Path(model_dir), backend="onnx-int8", onnx_dir=Path(onnx_dir))

    @app.post("/predict")
    def predict(body: Request) -> dict:
        out = predictor.predict(body.texts)  # one text per request in the benchmark: one forward pass
        return {"entities": [[e.model_dump() for e in ents] for ents in out]}

    @app.get("/ready")
    def ready() -> dict:
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    uvicorn.run(make_app(sys.argv[1], sys.argv[2]), host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
