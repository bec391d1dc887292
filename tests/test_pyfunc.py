"""The logged MLflow pyfunc model: the variant it serves, the files it carries, its params and its requirements.

Real export (optimum, ONNX Runtime), real parity record, real MLflow SQLite store and a real `mlflow models serve`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import build_tiny_model, free_port

from ner_pipeline import registry
from ner_pipeline.config import ExportConfig, RegistryConfig, TokenizeConfig
from ner_pipeline.export import VARIANTS, run_export, serving_default
from ner_pipeline.predict import PARITY_FILE, Predictor
from ner_pipeline.registry.pyfunc import is_torch_only, pip_requirements, served_variant, stage_model_files

NAME = "ner-pyfunc"
CFG = RegistryConfig(model_name=NAME)
TEXTS = [
    "Angela Merkel visited Zürich and Wolfsburg yesterday",
    "Schwarzenegger met Kubernetes maintainers in Reykjavík",
]


@pytest.fixture(scope="module")
def export(wnut_tiny):
    """A tiny model whose labels vary from word to word (so `first` and `max` aggregation differ), exported."""
    import torch
    from transformers import AutoModelForTokenClassification

    from ner_pipeline.ingest import read_labels
    from ner_pipeline.tokenize import load_tokenizer, make_preprocessing

    store, ingest, _ = wnut_tiny
    labels = read_labels(ingest)

    def produce(folder: Path) -> dict:
        torch.manual_seed(0)
        model_dir = build_tiny_model(folder / "model", labels=labels)
        model = AutoModelForTokenClassification.from_pretrained(model_dir)
        with torch.no_grad():  # a random head gives near-uniform logits: scale it so each subword has its own label
            model.classifier.weight.mul_(30.0)
        model.save_pretrained(model_dir)
        prep = make_preprocessing(load_tokenizer(str(model_dir)), TokenizeConfig(max_length=64, stride=8), labels)
        prep.save(model_dir)
        return {}

    train = store.build("train", "tiny-pyfunc", produce)
    exported = run_export(ExportConfig(parity_sentences=20, f1_tolerance=1.0), ingest, train, store)
    return train.path / "model", exported.path


def with_parity(source: Path, dest: Path, rejected: set[str]) -> Path:
    """A copy of the export folder whose parity record rejects `rejected` (as a failed check would)."""
    shutil.copytree(source, dest)
    report = json.loads((dest / PARITY_FILE).read_text())
    for name in rejected:
        report[name]["accepted"] = False
    report["default"] = serving_default(report)
    (dest / PARITY_FILE).write_text(json.dumps(report))
    return dest


def tree(folder: Path) -> dict[str, int]:
    """Every file under `folder` (relative path → bytes)."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


# --- which variant, which files ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_served_variant_follows_the_parity_record(export, tmp_path: Path):
    model_dir, onnx_dir = export
    assert served_variant(onnx_dir).backend == "onnx-int8"
    assert served_variant(onnx_dir).onnx_file == onnx_dir / VARIANTS["onnx-int8"]
    no_int8 = with_parity(onnx_dir, tmp_path / "no-int8", {"onnx-int8"})
    assert served_variant(no_int8).backend == "onnx"
    assert served_variant(no_int8).onnx_file == no_int8 / VARIANTS["onnx-optimized"]
    none = with_parity(onnx_dir, tmp_path / "none", {"onnx-int8", "onnx-optimized", "onnx"})
    assert served_variant(none) == served_variant(None) == served_variant(model_dir)  # no parity record: torch
    assert served_variant(none).backend == "torch"


@pytest.mark.slow
def test_only_the_files_of_the_served_variant_are_staged_once(export, tmp_path: Path):
    model_dir, onnx_dir = export
    no_int8 = with_parity(onnx_dir, tmp_path / "no-int8", {"onnx-int8"})
    variant, artifacts = stage_model_files(model_dir, no_int8, tmp_path / "staged")
    staged = tree(tmp_path / "staged")
    assert [f for f in staged if f.endswith(".onnx")] == ["onnx/model_optimized.onnx"]  # not the rejected int8
    assert set(artifacts) == {"model", "onnx"} and variant.backend == "onnx"
    assert not any(is_torch_only(Path(f)) for f in staged)  # an ONNX-served model needs no PyTorch weights
    weights = [p.name for p in model_dir.iterdir() if is_torch_only(p)]
    assert weights == ["model.safetensors"]
    names = [Path(f).name for f in staged]
    assert len(names) == len(set(names))  # config and tokenizer once, not once per folder

    none = with_parity(onnx_dir, tmp_path / "none", {"onnx-int8", "onnx-optimized", "onnx"})
    variant, artifacts = stage_model_files(model_dir, none, tmp_path / "staged-torch")
    assert variant.backend == "torch" and set(artifacts) == {"model"}
    assert set(tree(tmp_path / "staged-torch")) == {f"model/{p.name}" for p in model_dir.iterdir()}


def test_requirements_are_pypi_pins_without_local_version_labels():
    from packaging.requirements import Requirement
    from packaging.version import Version

    for backend in ("torch", "onnx", "onnx-int8"):
        pins = pip_requirements(backend)
        for line in pins:
            requirement = Requirement(line)
            [spec] = requirement.specifier
            assert spec.operator == "==" and Version(spec.version).local is None and "+" not in line, line
        names = {Requirement(line).name for line in pins}
        assert {"mlflow", "transformers", "seqeval"} <= names
        assert ("torch" in names) == (backend == "torch")  # an ONNX-served model never installs PyTorch
        assert ("onnxruntime" in names) == (backend != "torch")


# --- logged, registered, loaded, served ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered(export, tmp_path_factory: pytest.TempPathFactory):
    """The exported model registered in a real SQLite store: (tracking URI, version, its downloaded folder)."""
    model_dir, onnx_dir = export
    root = tmp_path_factory.mktemp("pyfunc-registry")
    uri = f"sqlite:///{root}/mlflow.db"
    client = registry.client_for(uri)
    run = client.create_run(client.create_experiment("pyfunc", artifact_location=str(root / "mlartifacts")))
    record = registry.log_and_register(
        CFG, model_dir, uri, run.info.run_id, {}, description="pyfunc test", onnx_dir=onnx_dir
    )
    logged = Path(registry.client_for(uri).get_model_version_download_uri(NAME, record["version"]))
    if not logged.is_dir():  # a URI rather than a path: download it
        import mlflow

        logged = Path(mlflow.artifacts.download_artifacts(artifact_uri=str(logged), tracking_uri=uri))
    return uri, record["version"], logged


@pytest.mark.slow
def test_the_logged_model_carries_the_accepted_onnx_file_once_and_nothing_of_the_others(registered, export):
    _, _, logged = registered
    model_dir, onnx_dir = export
    files = tree(logged)
    onnx_files = [f for f in files if f.endswith(".onnx")]
    assert onnx_files == ["artifacts/onnx/model_quantized.onnx"]
    assert not any(is_torch_only(Path(f)) for f in files if f.startswith("artifacts/"))
    artifact_names = [Path(f).name for f in files if f.startswith("artifacts/")]
    assert len(artifact_names) == len(set(artifact_names))
    # Its size: the served graph, the tokenizer and config, our code and MLflow's metadata; nothing else.
    needed = (onnx_dir / "model_quantized.onnx").stat().st_size + sum(
        p.stat().st_size for p in model_dir.iterdir() if not is_torch_only(p)
    )
    code = sum(size for f, size in files.items() if f.startswith("code/"))
    assert sum(files.values()) - code - needed < 100_000, files
    everything = sum(p.stat().st_size for p in [*model_dir.iterdir(), *onnx_dir.iterdir()])
    assert sum(files.values()) - code < everything / 2  # what was logged before: every graph and the weights

    requirements = (logged / "requirements.txt").read_text().split()
    assert not any("+" in line for line in requirements)
    assert any(line.startswith("onnxruntime==") for line in requirements)
    assert not any(line.startswith("torch==") for line in requirements)


@pytest.fixture
def registry_uris(registered):
    """MLflow's process-wide URIs pointed at the test store for `models:/` loading, then put back."""
    from ner_pipeline.registry.register import fluent_uris

    with fluent_uris(registered[0]):
        yield registered[0]


@pytest.mark.slow
def test_the_registered_model_predicts_on_int8_with_the_aggregation_it_is_given(registered, export, registry_uris):
    import mlflow.pyfunc
    import pandas as pd

    model_dir, onnx_dir = export
    version = registered[1]
    loaded = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    assert loaded.unwrap_python_model().predictor.backend.name == "onnx-int8"
    assert loaded.metadata.metadata == {"served_backend": "onnx-int8", "served_onnx_file": "model_quantized.onnx"}
    [param] = loaded.metadata.get_params_schema().params
    assert (param.name, param.default) == ("aggregation", "first")

    local = Predictor.load(model_dir, backend="onnx-int8", onnx_dir=onnx_dir)
    frame = pd.DataFrame({"text": TEXTS})
    by_aggregation = {}
    for aggregation in ("first", "max"):
        got = loaded.predict(frame, params={"aggregation": aggregation})
        assert got == [[e.model_dump() for e in ents] for ents in local.predict(TEXTS, aggregation=aggregation)]
        by_aggregation[aggregation] = got
    assert by_aggregation["first"] != by_aggregation["max"]  # the parameter reached the predictor
    assert loaded.predict(frame) == by_aggregation["first"]


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations_with_params(registered, export, tmp_path: Path):
    """`mlflow models serve` (in this environment: --env-manager local) on loopback, as a user would start it."""
    uri, version, _ = registered
    port = free_port()
    log = tmp_path / "serve.log"
    # As in an activated virtual environment: MLflow starts `uvicorn` from PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}/{version}"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}/ping", proc, log)
        model_dir, onnx_dir = export
        local = Predictor.load(model_dir, backend="onnx-int8", onnx_dir=onnx_dir)
        for aggregation in ("first", "max"):
            body = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}
            response = httpx.post(
                f"http://127.0.0.1:{port}/invocations",
                json={**body, "params": {"aggregation": aggregation}},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            expected = [[e.model_dump() for e in ents] for ents in local.predict(TEXTS, aggregation=aggregation)]
            assert response.json()["predictions"] == expected  # JSON keeps floats exactly
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_until_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited: {log.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"mlflow models serve not healthy within {timeout} s: {log.read_text()[-3000:]}")


@pytest.mark.slow
def test_cli_evaluates_a_registered_version_on_the_variant_it_ships(registered, tmp_path: Path):
    from typer.testing import CliRunner

    from ner_pipeline.cli import app

    uri, version, _ = registered
    data = tmp_path / "test.conll"
    data.write_text("Obama B-person\nvisited O\nParis B-geo-loc\n\n")
    out = tmp_path / "report"
    args = ["evaluate", "--model", f"models:/{NAME}/{version}", "--data", str(data), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--set", f"tracking.tracking_uri={uri}"])
    assert result.exit_code == 0, result.output  # no PyTorch weights were logged: it runs on the int8 graph
    assert "F1 (conlleval)" in result.output and (out / "report.md").is_file()
