"""`ner-pipeline run`, the README's main command, as a user runs it: a new process with Prefect's temporary server
and the MLflow store, auto-promotion through the gate, and the production alias served on its ONNX graph."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, write_tiny_config

from ner_pipeline import registry
from ner_pipeline.predict import PARITY_FILE, Predictor
from ner_pipeline.serve import choose_backend, load_handle

pytestmark = pytest.mark.slow

SAMPLE = ["Angela Merkel met Emmanuel Macron in Paris .", "new iphone launch in London tomorrow"]


def run_command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "ner-pipeline"), "run", *args]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    # From the project root, as the README runs it (the run records the checkout's git commit).
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_run_registers_promotes_and_the_production_alias_serves_the_exported_graph(tmp_path: Path, tiny_base_dir: Path):
    config = write_tiny_config(tmp_path, tiny_base_dir)  # quickstart-derived: export on, auto_promote on
    out = run_command(tmp_path, "--config", str(config)).stdout
    assert "Where to look next:" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db" in out
    assert "Registered: models:/ner-tiny/1" in out and "Gate:       PROMOTE" in out
    assert "Serve:      ner-pipeline serve --model models:/ner-tiny@production" in out
    [onnx_line] = [line for line in out.splitlines() if line.strip().startswith("ONNX:")]
    export_dir = Path(onnx_line.split(":", 1)[1].strip())

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    production = registry.client_for(uri).get_model_version_by_alias("ner-tiny", "production")
    assert str(production.version) == "1"
    tags = production.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT).stdout.strip()
    assert tags["model.base"] == str(tiny_base_dir) and tags["git.commit"] == head and tags["config.hash"]
    # artifact.register too: pruning must keep the record of this registration
    lineage = {"metric.test_f1", "data.test_fingerprint", "artifact.train", "artifact.export", "artifact.register"}
    assert lineage <= set(tags)

    parity = json.loads((export_dir / PARITY_FILE).read_text())
    handle = load_handle("models:/ner-tiny@production", "auto", uri)
    try:
        assert handle.info.backend == choose_backend("auto", parity) != "torch"
        assert handle.info.version == "1" and handle.info.alias == "production"
        local = Predictor.load(export_dir, backend=handle.info.backend)  # type: ignore[arg-type]
        assert handle.predictor.predict(SAMPLE) == local.predict(SAMPLE)
    finally:
        handle.close()
    assert handle.workdir is None

    again = run_command(tmp_path, "--config", str(config), "--only", "evaluate").stdout
    assert "| evaluate | cache hit |" in again and "| train | cache hit |" in again
    assert len(registry.client_for(uri).search_model_versions("name='ner-tiny'")) == 1  # nothing new registered
