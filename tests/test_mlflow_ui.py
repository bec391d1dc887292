"""The MLflow UI link `ner-pipeline run` prints opens the "Model training" view with our runs, in headless Chromium
against a real `mlflow ui` on loopback (Debian's chromium + chromium-driver, as for the demo page)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, wait_for_port
from test_demo_page import browser  # noqa: F401 - the headless Chromium fixture

from ner_pipeline import tracking
from ner_pipeline.config import PipelineConfig

pytestmark = pytest.mark.slow
RUN_NAMES = ("minilm-lr-1e-4", "minilm-lr-3e-5")


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[str, str]:
    """A SQLite store with two finished runs shaped like ours: validation F1 per step, a test F1."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = PipelineConfig.model_validate({"name": "compare", "tracking": {"artifact_location": str(tmp_path / "a")}})
    for name, scale in zip(RUN_NAMES, (1.0, 0.8), strict=True):
        tracker = tracking.start_run(cfg, uri, run_name=name)
        for step in (40, 80, 120):
            tracker.log_metrics({"eval_f1": scale * step / 200}, step=step)
        tracker.log_metrics({"test_f1": scale * 0.5})
        tracker.end()
    return uri, tracking.experiment_of_run(uri, tracker.run_id)


@pytest.fixture
def mlflow_ui(tmp_path: Path, two_runs: tuple[str, str]):
    uri, _ = two_runs
    port = free_port()
    log = tmp_path / "mlflow-ui.log"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log.open("w") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, proc, log, timeout=300)  # its first start migrates the store: slow on 2 busy cores
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started, all in its own group
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_printed_link_opens_the_runs_table_of_the_experiment(
    mlflow_ui: int,
    two_runs: tuple[str, str],
    browser,  # noqa: F811 - the fixture imported above
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    uri, experiment_id = two_runs
    url = tracking.experiment_url(uri, experiment_id).replace("127.0.0.1:5000", f"127.0.0.1:{mlflow_ui}")
    browser.get(url)

    def runs_table_text(driver) -> str | bool:
        grids = driver.find_elements(By.CSS_SELECTOR, '[role="grid"]')
        text = " ".join(g.text for g in grids)
        return text if all(name in text for name in RUN_NAMES) else False

    WebDriverWait(browser, 120).until(runs_table_text)
    assert f"/experiments/{experiment_id}/runs" in browser.current_url  # the runs page, not the GenAI overview
    assert "workflowType=machine_learning" in browser.current_url
