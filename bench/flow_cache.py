"""How long the training flow takes when nothing changed: every stage a cache hit, Prefect start-up included.

Runs `ner-pipeline run --config configs/quickstart.yaml` once (the baseline: whatever has to be computed, from
scratch with --fresh), then `--repeats` more times with nothing changed, each a new process that starts Prefect's
temporary server, and checks that the reruns computed nothing.

    .venv/bin/python bench/flow_cache.py --fresh
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, machine, markdown_table, update_doc, write_results


def run_main_job(root: Path) -> tuple[float, str]:
    cmd = [
        str(Path(sys.executable).parent / "ner-pipeline"),
        "run",
        "--config",
        "configs/quickstart.yaml",
        "--set",
        f"artifacts_root={root / 'artifacts'}",
        "--set",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        "--set",
        f"tracking.artifact_location={root / 'mlartifacts'}",
    ]
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect")}
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return wall, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="start from an empty cache (the baseline computes all)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="flow-cache-"))
    first, _ = run_main_job(root)
    reruns = []
    for _ in range(args.repeats):
        wall, out = run_main_job(root)
        assert "| computed |" not in out, f"a rerun with nothing changed computed something:\n{out}"
        reruns.append(wall)
    shutil.rmtree(root, ignore_errors=True)
    median = statistics.median(reruns)
    command = ".venv/bin/python bench/flow_cache.py --fresh"
    write_results(
        "flow_cache",
        {
            "command": command,
            "first_run_s": first,
            "rerun_s": reruns,
            "rerun_median_s": median,
            "speedup": first / median,
        },
    )
    table = markdown_table(
        ["", "wall s"], [["first run (computes every stage)", first], ["rerun, nothing changed (median)", median]]
    )
    section = f"""## Rerunning the flow with nothing changed (`bench/flow_cache.py`)

Command: `{command}`: `ner-pipeline run --config configs/quickstart.yaml` once from an empty cache, then
{args.repeats} more times; each run is a new process that starts Prefect's temporary server and opens an MLflow run.
Median of the {args.repeats} reruns. Machine: {machine()}.

{table}

Every stage of every rerun was a cache hit (checked); the rerun is {first / median:.1f}x faster than the first run
(target: under 30 s on 2 cores, Prefect start-up included).
"""
    update_doc("flow_cache", section)
    print(table)


if __name__ == "__main__":
    main()
