"""The service: TestClient against the real app, and a real uvicorn process serving a registered model."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import TINY_LABELS, free_port
from fastapi.testclient import TestClient
from serve_support import HOLD, controlled_loader, count_passes, ready_client

from ner_pipeline.config import RegistryConfig, ServeConfig
from ner_pipeline.predict import Predictor, split_words
from ner_pipeline.serve import ModelHandle, create_app, load_handle

SAMPLE = ["Angela Merkel met Emmanuel Macron in Paris .", "Nothing here", "São Paulo 🎉 Zoë"]


SETTINGS = ServeConfig(max_texts=4, max_chars=200, max_request_chars=300, batch_wait_ms=2)


@pytest.fixture
def client(person_model: Path):
    app = create_app(SETTINGS, loader=lambda: load_handle(str(person_model), "torch", None))
    with ready_client(app) as test_client:
        yield test_client


def test_predict_returns_what_the_predictor_returns(client: TestClient, person_model: Path):
    response = client.post("/predict", json={"texts": SAMPLE})
    assert response.status_code == 200
    expected = Predictor.load(person_model).predict(SAMPLE)
    assert response.json()["entities"] == [[e.model_dump() for e in ents] for ents in expected]
    assert response.headers["X-Request-ID"]


def test_health_ready_and_model_describe_the_service(client: TestClient, person_model: Path):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}
    info = client.get("/model").json()
    assert info["backend"] == "torch" and info["labels"] == TINY_LABELS
    assert info["name"] == info["source"] == f"{person_model.parent.name}/{person_model.name}"  # no full path
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_limits_give_413_and_malformed_bodies_422(client: TestClient):
    too_many = client.post("/predict", json={"texts": ["a"] * 5})
    assert too_many.status_code == 413 and "too many texts: 5 > 4" in too_many.json()["detail"]
    too_long = client.post("/predict", json={"texts": ["ok", "x" * 201]})
    assert too_long.status_code == 413 and "texts[1] has 201 characters" in too_long.json()["detail"]
    too_much = client.post("/predict", json={"texts": ["x" * 200, "y" * 101]})
    assert too_much.status_code == 413 and "301 characters in all; the limit is 300" in too_much.json()["detail"]
    assert (
        client.post("/predict", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422
    )
    assert client.post("/predict", json={"texts": "not a list"}).status_code == 422
    assert client.post("/predict", json={"texts": []}).status_code == 422


def test_api_key_is_required_on_every_route_but_the_probes(person_model: Path):
    app = create_app(SETTINGS, loader=lambda: load_handle(str(person_model), "torch", None), api_key="s3cret")
    key = {"X-API-Key": "s3cret"}
    with ready_client(app) as client:
        assert client.post("/predict", json={"texts": ["a"]}).status_code == 401
        assert client.post("/predict", json={"texts": ["a"]}, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/predict", json={"texts": ["a"]}, headers=key).status_code == 200
        # Checked before the body is read: a malformed body without the key is a 401, not a 422.
        assert (
            client.post("/predict", content=b"{not json", headers={"Content-Type": "application/json"}).status_code
            == 401
        )
        for path in ("/model", "/docs", "/openapi.json", "/", "/docs-static/swagger-ui.css", "/no-such-route"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers=key).status_code == (404 if path == "/no-such-route" else 200), path
        assert client.post("/admin/reload").status_code == 401
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").json() == {"status": "ready"}
        schemes = client.get("/openapi.json", headers=key).json()["components"]["securitySchemes"]
        assert [s["name"] for s in schemes.values()] == ["X-API-Key"]  # /docs offers it under "Authorize"


def test_internal_errors_carry_no_stack_trace(person_model: Path):
    class Broken:
        name = "broken"

        def logits(self, input_ids, attention_mask):
            raise RuntimeError("secret internals /etc/passwd")

    def loader() -> ModelHandle:
        handle = load_handle(str(person_model), "torch", None)
        handle.predictor.backend = Broken()  # a failing model, injected to check what a client sees
        return handle

    with ready_client(create_app(SETTINGS, loader=loader), raise_server_exceptions=False) as client:
        response = client.post("/predict", json={"texts": ["a"]}, headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error", "request_id": "req-500"}
    assert response.headers["X-Request-ID"] == "req-500"
    assert "Traceback" not in response.text and "passwd" not in response.text


def test_concurrent_requests_are_batched_into_fewer_forward_passes(person_model: Path):
    app = create_app(
        ServeConfig(batch_wait_ms=50, max_batch_size=64), loader=lambda: load_handle(str(person_model), "torch", None)
    )
    with ready_client(app) as client:
        threads = [
            threading.Thread(target=client.post, args=("/predict",), kwargs={"json": {"texts": [f"t{i}"]}})
            for i in range(12)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert app.state.service.batcher.batches < 12


def test_concurrent_requests_each_get_the_entities_of_their_own_texts(person_model: Path):
    """Requests batched into one forward pass are answered with their own texts' entities, in their own order."""
    app = create_app(
        ServeConfig(batch_wait_ms=50, max_batch_size=64), loader=lambda: load_handle(str(person_model), "torch", None)
    )
    # Different word counts and lengths per request (and two texts in some), so any mix-up shifts offsets.
    requests = [
        [" ".join(f"caller{i}word{k}" for k in range(1 + i % 4)), *(["  Zoë " + "x" * i] if i % 3 == 0 else [])]
        for i in range(12)
    ]
    answers: dict[int, dict] = {}
    with ready_client(app) as client:

        def call(i: int) -> None:
            answers[i] = client.post("/predict", json={"texts": requests[i]}).json()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert app.state.service.batcher.batches < len(requests)
    predictor = Predictor.load(person_model)
    for i, texts in enumerate(requests):
        entities = answers[i]["entities"]
        assert len(entities) == len(texts)
        for text, found in zip(texts, entities, strict=True):
            assert [text[e["start"] : e["end"]] for e in found] == [e["text"] for e in found]
            assert [e["text"] for e in found] == [word for word, _, _ in split_words(text)]  # every word is a PER
            assert found == [e.model_dump() for e in predictor.predict(text)[0]]


def test_coalesced_requests_share_as_few_forward_passes_as_the_token_budget_allows(person_model: Path):
    """Requests queued behind a running batch form the next batch; its passes are those of one predict call."""
    loader, made = controlled_loader(person_model)
    app = create_app(ServeConfig(batch_wait_ms=0), loader=loader)
    # Sentences of ~40 tokens: a few fit the torch budget of 256 padded tokens per pass, twelve do not.
    texts = [" ".join(["Angela Merkel met Emmanuel Macron in Paris"] * (3 + i % 3)) for i in range(12)]
    answers: dict[int, dict] = {}
    with ready_client(app) as client:
        backend = made["backend"]
        gate = app.state.service.gate
        holder = threading.Thread(target=client.post, args=("/predict",), kwargs={"json": {"texts": [HOLD]}})
        holder.start()
        assert backend.entered.wait(30)

        def call(i: int) -> None:
            answers[i] = client.post("/predict", json={"texts": [texts[i]]}).json()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while app.state.service.batcher.small.qsize() < len(texts) and time.monotonic() < deadline:
            time.sleep(0.01)
        passes_before = gate.passes
        backend.release.set()
        for t in [holder, *threads]:
            t.join()
        passes = gate.passes - passes_before - 1  # the held pass ends after the release
    expected = Predictor.load(person_model).predict(texts)
    one_call = count_passes(person_model, texts)
    assert 1 < one_call < len(texts)
    assert passes == one_call, "the twelve requests ran as one predict call over all their texts"
    for i, text in enumerate(texts):
        assert answers[i]["entities"] == [[e.model_dump() for e in expected[i]]], text


def test_demo_page_is_served(client: TestClient):
    page = client.get("/")
    assert page.status_code == 200 and "Find entities" in page.text and "/predict" in page.text


# --- a real uvicorn process serving the registry's production model --------------------------------------------


@pytest.fixture
def registry_with_two_versions(tmp_path: Path, person_model: Path, location_model: Path, monkeypatch) -> str:
    from ner_pipeline import registry

    monkeypatch.chdir(tmp_path)  # a run without an experiment logs its model under ./mlruns: not in the checkout

    uri = f"sqlite:///{tmp_path}/registry.db"  # not MLflow's default file name, so nothing finds it by accident
    cfg = RegistryConfig(model_name="ner-serve")
    for model, f1 in ((person_model, 0.5), (location_model, 0.6)):
        tags = {"metric.test_f1": str(f1), "data.test_fingerprint": "same"}
        registry.log_and_register(cfg, model, uri, None, tags, description="serve test")
    registry.promote(uri, cfg, "ner-serve", "1")
    return uri


@pytest.fixture
def live_server(tmp_path: Path, registry_with_two_versions: str):
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    # The URI comes from the config, not the environment: the registry download must follow it on its own.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["NER_API_KEY"] = "k3y"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ner_pipeline.cli",
            "serve",
            "--model",
            "models:/ner-serve@production",
            "--port",
            str(port),
            "--set",
            "tracking.tracking_uri=sqlite:///registry.db",  # relative to cwd, as the embedded default is
        ],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail((tmp_path / "serve.log").read_text()[-3000:])
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("service not ready within 120 s")
    yield base, registry_with_two_versions, tmp_path / "serve.log"
    proc.terminate()
    proc.wait(20)
    log.close()


@pytest.mark.slow
def test_live_service_serves_production_and_picks_up_a_promotion_without_failing_requests(live_server):
    from ner_pipeline import registry

    base, uri, log = live_server
    key = {"X-API-Key": "k3y"}
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}
    assert httpx.get(f"{base}/model").status_code == 401
    assert httpx.get(f"{base}/model", headers=key).json()["version"] == "1"
    first = httpx.post(f"{base}/predict", json={"texts": ["Paris"]}, headers=key).json()
    assert first["model"] == "ner-serve/1" and first["entities"][0][0]["label"] == "PER"
    assert httpx.post(f"{base}/predict", json={"texts": ["Paris"]}).status_code == 401
    assert httpx.post(f"{base}/predict", json={"texts": ["x" * 20_001]}, headers=key).status_code == 413
    assert httpx.post(f"{base}/predict", json={"texts": ["a"] * 65}, headers=key).status_code == 413
    assert (
        httpx.post(f"{base}/predict", content=b"[", headers={**key, "Content-Type": "application/json"}).status_code
        == 422
    )

    statuses: list[int] = []
    models: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(base_url=base, headers=key, timeout=30) as http:
            while not stop.is_set():
                response = http.post("/predict", json={"texts": ["Paris", "Berlin"]})
                statuses.append(response.status_code)
                models.append(response.json().get("model", ""))

    workers = [threading.Thread(target=stream) for _ in range(3)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    # Forced: these versions carry no test predictions for the gate, and the swap under load is what is tested.
    decision = registry.promote(uri, RegistryConfig(model_name="ner-serve"), "ner-serve", "2", True, "swap test")
    assert decision.accepted
    reloaded = httpx.post(f"{base}/admin/reload", headers=key, timeout=120)
    assert reloaded.status_code == 200 and reloaded.json()["version"] == "2"
    time.sleep(1.0)
    stop.set()
    for w in workers:
        w.join()
    assert statuses and set(statuses) == {200}, f"failed requests during the swap: {set(statuses)}"
    assert "ner-serve/1" in models and models[-1] == "ner-serve/2"
    after = httpx.post(f"{base}/predict", json={"texts": ["Paris"]}, headers=key).json()
    assert after["entities"][0][0]["label"] == "LOC"
    lines = log.read_text().splitlines()
    request_lines = [line for line in lines if "POST /predict" in line]
    assert request_lines and all("[-]" not in line for line in request_lines), "every request line has its id"


def test_polling_swaps_in_the_version_the_alias_moved_to(person_model: Path, location_model: Path):
    """The alias lookup is injected here (the registry-backed one runs in the live test below)."""
    alias_points_at = {"version": "1"}
    folders = {"1": person_model, "2": location_model}

    def loader() -> ModelHandle:
        version = alias_points_at["version"]
        handle = load_handle(str(folders[version]), "torch", None)
        handle.info.version = version
        return handle

    settings = ServeConfig(reload_poll_seconds=0.2)
    app = create_app(settings, loader=loader, current_version=lambda: alias_points_at["version"])
    with ready_client(app) as client:
        assert client.post("/predict", json={"texts": ["Paris"]}).json()["entities"][0][0]["label"] == "PER"
        alias_points_at["version"] = "2"
        deadline = time.monotonic() + 30
        while client.get("/model").json()["version"] != "2" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.post("/predict", json={"texts": ["Paris"]}).json()["entities"][0][0]["label"] == "LOC"


def test_a_failed_reload_keeps_serving_and_the_next_poll_swaps_and_frees_the_old_download(
    person_model: Path, location_model: Path, tmp_path: Path
):
    alias_points_at = {"version": "1"}
    folders = {"1": person_model, "2": location_model}
    failures = {"left": 1}

    def loader() -> ModelHandle:
        version = alias_points_at["version"]
        if version == "2" and failures["left"]:
            failures["left"] -= 1
            raise OSError("registry download cut off")
        handle = load_handle(str(folders[version]), "torch", None)
        handle.info.version = version
        handle.workdir = tmp_path / f"download-{version}"  # what load_handle sets for a models:/ source
        handle.workdir.mkdir()
        return handle

    app = create_app(
        ServeConfig(reload_poll_seconds=0.2), loader=loader, current_version=lambda: alias_points_at["version"]
    )
    with ready_client(app) as client:
        alias_points_at["version"] = "2"
        deadline = time.monotonic() + 30
        while client.get("/model").json()["version"] != "2" and time.monotonic() < deadline:
            assert client.post("/predict", json={"texts": ["Paris"]}).status_code == 200
            time.sleep(0.1)
        assert failures["left"] == 0, "the first reload failed"
        assert client.get("/model").json()["version"] == "2", "a later poll retried and swapped"
        assert not (tmp_path / "download-1").exists()
        assert (tmp_path / "download-2").is_dir()
    assert not (tmp_path / "download-2").exists()  # shutdown frees the served download too


def test_a_batch_that_is_already_full_is_served_without_waiting_for_more(person_model: Path):
    # With max_batch_size texts in hand, the batch cannot take another request: waiting serve.batch_wait_ms for one
    # only delayed it (serve.max_batch_size=1 made every request wait the whole window).
    app = create_app(
        ServeConfig(max_batch_size=2, batch_wait_ms=3000), loader=lambda: load_handle(str(person_model), "torch", None)
    )
    with ready_client(app) as client:
        started = time.perf_counter()
        response = client.post("/predict", json={"texts": ["Angela Merkel", "Paris"]})
        assert response.status_code == 200 and len(response.json()["entities"]) == 2
        assert time.perf_counter() - started < 1.5
