"""The temporary Prefect server of `ner-pipeline run`: generous start-up time, one retry, a clear error after two
failures (the kill -9 case is in test_run_lifecycle.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from conftest import free_port

from ner_pipeline.errors import NerPipelineError
from ner_pipeline_flows import server

pytestmark = pytest.mark.slow


def test_startup_waits_120_s_unless_told_otherwise():
    assert server.startup_timeout({}) == 120
    assert server.startup_timeout({server.TIMEOUT_VARIABLE: "300"}) == 300


def test_a_server_that_cannot_start_is_retried_once_on_another_port(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1], free_port()])
        started = server.start_server(120, tmp_path, port_for=lambda: next(ports))
        try:
            assert started.port != taken.getsockname()[1]
            assert httpx.get(f"{started.api_url}/health", timeout=10).status_code == 200
        finally:
            started.stop()
    assert started.process.returncode is not None


def test_two_failed_starts_end_in_one_line_naming_the_setting_and_the_log(tmp_path: Path):
    with pytest.raises(NerPipelineError) as raised:
        server.start_server(0.5, tmp_path)
    message = str(raised.value)
    assert "2 attempts" in message and server.TIMEOUT_VARIABLE in message and str(tmp_path) in message
    assert "\n" not in message


def test_a_configured_api_url_is_used_and_no_server_is_started():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}), server.prefect_api() as url:
        assert url == "http://127.0.0.1:9/api"  # nothing listens there: a started server would have another URL
