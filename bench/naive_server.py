"""The baseline service of the seed design: FastAPI + a transformers pipeline, one PyTorch forward per request.

The pipeline reads each word from its first subword (`aggregation_strategy="first"`), as the model was trained;
`"simple"` breaks entities apart and would make the baseline look worse than it is.

python bench/naive_server.py MODEL_DIR PORT
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline


class Request(BaseModel):
    texts: list[str]


def make_app(model_dir: str) -> FastAPI:
    app = FastAPI()
    tagger = pipeline("token-classification", model=model_dir, aggregation_strategy="first", device=-1)

    @app.post("/predict")
    def predict(body: Request) -> dict:
        out = [tagger(text) for text in body.texts]
        return {"entities": [[{**e, "score": float(e["score"])} for e in ents] for ents in out]}

    @app.get("/ready")
    def ready() -> dict:
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    uvicorn.run(make_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
