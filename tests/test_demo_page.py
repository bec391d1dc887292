"""The demo page, driven in headless Chromium (Debian's chromium + chromium-driver; .ci/run installs them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from serve_support import live_server

from ner_pipeline.config import ServeConfig
from ner_pipeline.predict import Predictor
from ner_pipeline.serve import create_app, load_handle

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Code-point offsets from the API, UTF-16 strings in the browser: an emoji or a flag before an entity used to
# shift its highlight ("h Em" instead of "Emmanuel").
SENTENCES = ["Angela Merkel visited São Paulo", "🇩🇪🇫🇷 Angela Merkel visited Zürich 🇨🇭 with Emmanuel Macron."]


@pytest.fixture
def served(person_model: Path):
    app = create_app(ServeConfig(), loader=lambda: load_handle(str(person_model), "torch", None))
    with live_server(app) as base:
        yield base


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


@pytest.mark.parametrize("sentence", SENTENCES, ids=["accents", "flags-and-emoji"])
def test_typing_a_sentence_highlights_the_entities(served: str, browser, person_model: Path, tmp_path: Path, sentence):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(served + "/")
    WebDriverWait(browser, 30).until(ec.text_to_be_present_in_element((By.ID, "meta"), "torch"))
    box = browser.find_element(By.ID, "text")
    # chromedriver types only characters of the Basic Multilingual Plane: flags and emoji are set directly.
    browser.execute_script("arguments[0].value = arguments[1];", box, sentence)
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
    )
    marks = browser.find_elements(By.CSS_SELECTOR, "#result mark.entity")
    shown = [(m.get_attribute("data-label"), text_of(browser, "arguments[0].firstChild", m)) for m in marks]
    expected = [(e.label, e.text) for e in Predictor.load(person_model).predict(sentence)[0]]
    assert shown == expected and expected
    assert {text for _, text in shown} >= {"Angela", "Merkel", "Emmanuel"} & set(sentence.split())
    # The highlighted page reads as the sentence itself once the label tags are taken out: nothing shifted or split.
    browser.execute_script("document.querySelectorAll('#result .lbl').forEach(n => n.remove());")
    assert text_of(browser, "document.getElementById('result')") == sentence
    browser.save_screenshot(str(tmp_path / "demo.png"))
    assert (tmp_path / "demo.png").stat().st_size > 1000


def text_of(browser, node: str, *args) -> str:
    """A node's text, passed as code points: chromedriver cannot hand back a string holding a lone flag letter."""
    script = f"return Array.from({node}.textContent).map(c => c.codePointAt(0));"
    return "".join(map(chr, browser.execute_script(script, *args)))


def test_docs_load_offline_behind_the_api_key_and_show_the_predict_operation(person_model: Path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = create_app(ServeConfig(), loader=lambda: load_handle(str(person_model), "torch", None), api_key="k3y")
    with live_server(app) as base:
        browser.get(base + "/docs")
        assert "missing or wrong API key" in browser.page_source
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"X-API-Key": "k3y"}})
        browser.get(base + "/docs")
        operation = WebDriverWait(browser, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#operations-predict-predict_predict_post")
        )[0]
        assert "/predict" in operation.text
        resources = browser.execute_script("return performance.getEntriesByType('resource').map(r => r.name);")
    assert any(r.endswith("/docs-static/swagger-ui-bundle.js") for r in resources)
    assert resources and all(r.startswith(base + "/") for r in resources), resources  # nothing from a CDN
