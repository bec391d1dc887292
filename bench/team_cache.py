"""Worker A's full run of the team deployment vs worker B's run of the same deployment on an empty local disk.

Starts the team stack of tests/team_stack.py on loopback (PostgreSQL, moto's S3 server, `mlflow server` on
PostgreSQL + S3, `prefect server` on PostgreSQL), deploys deployments/team.yaml (configs/team.yaml: the quickstart
with its cache on S3) and lets worker A run it from scratch. Then `--repeats` times a new worker B (its own
checkout, an empty XDG_CACHE_HOME) runs the same deployment, and once a new worker runs only the evaluate stage
with a changed evaluate setting (a selected stage: it needs the model and the tokenized data, not the rest). Wall
time is from `prefect deployment run` to the flow run's end; bytes are what crossed the S3 server (request and
response bodies, MLflow's artifact traffic included) and what the worker's local cache holds afterwards.

    .venv/bin/python bench/team_cache.py
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from report import ROOT, machine, markdown_table, update_doc, write_results
from team_stack import TeamStack, Worker, deploy_team, new_worker, run_deployment, run_summary, team_stack

MB = 1e6


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def measured_run(stack: TeamStack, worker: Worker, overrides: list[str], **parameters: object) -> dict:
    """One run of the team deployment on `worker`: wall seconds, S3 bytes each way, local cache bytes, stages."""
    before = dataclasses.replace(stack.s3.traffic)
    flow_run_id, seconds = run_deployment(worker, stack, overrides, timeout=3600, **parameters)
    worker.stop()
    moved = stack.s3.traffic.since(before)
    return {
        "wall_s": seconds,
        "s3_downloaded_bytes": moved.downloaded,
        "s3_uploaded_bytes": moved.uploaded,
        "s3_requests": moved.requests,
        "local_cache_bytes": disk_bytes(worker.cache_home) if worker.cache_home.exists() else 0,
        "stages": run_summary(stack.client_env(), flow_run_id),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="worker B runs, each on a new empty disk")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="team-cache-"))
    load_before = os.getloadavg()[1]
    try:
        with team_stack(folder) as stack:
            store_bytes, rows = run_all(stack, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows["load_avg_5min"] = [load_before, os.getloadavg()[1]]
    report(rows, store_bytes, args.repeats)


def run_all(stack: TeamStack, repeats: int) -> tuple[int, dict]:
    deploy_team(stack, ROOT)
    a = measured_run(stack, new_worker(stack, "worker-a", ROOT), [])
    assert set(a["stages"].values()) == {"computed"}, f"worker A reused something: {a['stages']}"
    stored = stack.s3.keys("artifacts/")
    store_bytes = sum(stored.values())
    stage_bytes = {}
    for key, size in stored.items():
        stage = key.split("/")[1]
        stage_bytes[stage] = stage_bytes.get(stage, 0) + size
    b_runs = []
    for i in range(repeats):
        b = measured_run(stack, new_worker(stack, f"worker-b{i}", ROOT), [])
        assert set(b["stages"].values()) == {"cache hit"}, f"worker B computed something: {b['stages']}"
        b_runs.append(b)
    selected = measured_run(
        stack, new_worker(stack, "worker-c", ROOT), ["evaluate.bootstrap_samples=200"], only=["evaluate"]
    )
    assert selected["stages"]["evaluate"] == "computed", selected["stages"]
    return store_bytes, {"a": a, "b": b_runs, "selected": selected, "stage_bytes": stage_bytes}


def report(rows: dict, store_bytes: int, repeats: int) -> None:
    a, b_runs, selected = rows["a"], rows["b"], rows["selected"]
    measures = ("wall_s", "s3_downloaded_bytes", "local_cache_bytes")
    b_median = {k: statistics.median([r[k] for r in b_runs]) for k in measures}
    speedup = a["wall_s"] / b_median["wall_s"]
    needed = sum(rows["stage_bytes"].get(stage, 0) for stage in ("ingest", "tokenize", "train"))
    command = ".venv/bin/python bench/team_cache.py"
    write_results(
        "team_cache",
        {"command": command, "store_bytes": store_bytes, "worker_a": a, "worker_b": b_runs,
         "worker_b_median": b_median, "selected_stage": selected, "speedup": speedup,
         "load_avg_5min": rows["load_avg_5min"], "store_bytes_by_stage": rows["stage_bytes"]},
    )  # fmt: skip

    def row(label: str, r: dict) -> list:
        return [label, r["wall_s"], r["s3_downloaded_bytes"] / MB, r.get("s3_uploaded_bytes", 0) / MB,
                r["local_cache_bytes"] / MB]  # fmt: skip

    table = markdown_table(
        ["", "wall s", "S3 downloaded MB", "S3 uploaded MB", "local cache MB"],
        [
            row("worker A: full run, every stage computed", a),
            row(f"worker B: same deployment, empty disk (median of {repeats})", b_median),
            row("worker C: only evaluate, one evaluate setting changed", selected),
        ],
    )
    section = f"""## The team deployment on a second worker (`bench/team_cache.py`)

Command: `{command}`. The team stack on loopback (PostgreSQL 15, moto's S3 server, `mlflow server` on PostgreSQL +
S3, `prefect server` on PostgreSQL); `deployments/team.yaml` (`configs/team.yaml`: the quickstart, cache on S3) run by
process workers, each with its own checkout and an empty `XDG_CACHE_HOME`. Worker A runs it from scratch (one run:
it trains for minutes); then {repeats} new workers B run the same deployment (median); then a new worker runs only
evaluate with `evaluate.bootstrap_samples=200`. Wall time from `prefect deployment run` to the end of the flow run;
S3 bytes are the bodies that crossed the S3 server (MLflow's artifact traffic included). The store holds
{store_bytes / MB:.1f} MB after worker A. Machine: {machine()}; 5-minute load average {rows["load_avg_5min"][0]:.1f} at
the start, {rows["load_avg_5min"][1]:.1f} at the end (other jobs shared the cores).

{table}

Worker B is **{speedup:.1f}x** faster than worker A (target ≥ 10x); every stage of every B run was a cache hit
(checked) and it downloaded {b_median["s3_downloaded_bytes"] / MB:.2f} MB, the manifests, of the
{store_bytes / MB:.1f} MB in the store (target: only what a stage needs). The evaluate-only run downloaded
{selected["s3_downloaded_bytes"] / MB:.1f} MB; what evaluate reads, the ingest, tokenize and train artifacts, holds
{needed / MB:.1f} MB in the store, the export it does not read {rows["stage_bytes"].get("export", 0) / MB:.1f} MB
(training checkpoints, deleted once the train artifact is complete, are not counted).
"""
    update_doc("team_cache", section)
    print(table)


if __name__ == "__main__":
    main()
