"""The demo page, driven in headless Chromium (Debian's chromium + chromium-driver; .ci/run installs them)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from conftest import free_port

from ner_pipeline.config import ServeConfig
from ner_pipeline.predict import Predictor
from ner_pipeline.serve import create_app, load_handle

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SENTENCE = "Angela Merkel visited São Paulo"


@pytest.fixture
def served(person_model: Path):
    port = free_port()
    app = create_app(ServeConfig(), loader=lambda: load_handle(str(person_model), "torch", None))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def browser(tmp_path: Path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Debian chromium/chromium-driver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1000,700",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_typing_a_sentence_highlights_the_entities(served: str, browser, person_model: Path, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(served + "/")
    WebDriverWait(browser, 30).until(ec.text_to_be_present_in_element((By.ID, "meta"), "torch"))
    box = browser.find_element(By.ID, "text")
    box.clear()
    box.send_keys(SENTENCE)
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
    )
    marks = browser.find_elements(By.CSS_SELECTOR, "#result mark.entity")
    shown = [
        (m.get_attribute("data-label"), m.text.rsplit("\n", 1)[0].removesuffix(m.get_attribute("data-label")).strip())
        for m in marks
    ]
    expected = [(e.label, e.text) for e in Predictor.load(person_model).predict(SENTENCE)[0]]
    assert shown == expected
    assert browser.find_element(By.ID, "result").text.replace("\n", " ").count("PER") == len(expected)
    browser.save_screenshot(str(tmp_path / "demo.png"))
    assert (tmp_path / "demo.png").stat().st_size > 1000
