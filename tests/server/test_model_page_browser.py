"""The model page in a real browser: Debian's headless Chromium driven by Selenium 4.

A real LeNet (``python -m export``) is served by a real server; the test loads the page,
finds the model, uploads a real handwritten digit (scikit-learn's ``load_digits``, upscaled
to a PNG) through the page's form and reads the top label the page shows. The digit is one
the server's own gRPC answer classifies correctly, so the test checks the page, not the
model. A second case sets ``--auth-token``: the page asks for it first.

Skips when ``/usr/bin/chromium`` or ``/usr/bin/chromedriver`` is missing, unless
``CNNSERVE_REQUIRE_BROWSER=1`` (``make browser-test``), which makes that a failure.
Selenium Manager is never used: the driver's path is given, so nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from grpc import aio
from PIL import Image
from server_testlib import export_lenet, make_settings

import modelrepo
from protocol import image_classification_pb2 as img_pb
from protocol import image_classification_pb2_grpc as img_grpc
from server import InferenceServer, create_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REQUIRE = os.environ.get("CNNSERVE_REQUIRE_BROWSER") == "1"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: With characters (+/=) that a cookie holds as they are but URI-encoding would change.
TOKEN = "browser+test/token=7"
WINDOW = (1200, 900)
WAIT_S = 20
#: The digit class the test uploads (not the first label, so a page that shows the first
#: class, or always the same one, fails).
DIGIT = 7


def _missing() -> list[str]:
    return [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]


if _missing():
    message = f"{' and '.join(_missing())} missing: install Debian's chromium chromium-driver"
    if REQUIRE:
        pytest.fail(f"CNNSERVE_REQUIRE_BROWSER=1 but {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.browser]


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real LeNet from ``python -m export`` (fewer epochs than the default: about 92% accurate)."""
    return export_lenet(
        tmp_path_factory.mktemp("browser-repo"), "--epochs", "20", "--no-progress", timeout=540
    )


@dataclass(frozen=True)
class Digit:
    label: str
    png: Path
    grpc_top5: list[str]


@pytest.fixture(scope="module")
def digit_pngs(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, Path]]:
    """Every handwritten ``DIGIT`` of scikit-learn's set, 8x8 upscaled to a 112x112 PNG."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    bunch = load_digits()
    pngs = []
    for index in np.flatnonzero(bunch.target == DIGIT):
        pixels = np.rint(bunch.images[index] * (255.0 / 16.0)).astype(np.uint8)
        path = root / f"digit-{index}-{DIGIT}.png"
        Image.fromarray(pixels, "L").resize((112, 112), Image.Resampling.NEAREST).save(path)
        pngs.append((int(bunch.target[index]), path))
    return pngs


async def pick_digit(grpc_port: int, pngs: list[tuple[int, Path]], token: str | None = None) -> Digit:
    """The first digit the server itself (gRPC ImageClassification) labels correctly."""
    async with aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = img_grpc.ImageClassificationStub(channel)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        for target, png in pngs:
            reply = await stub.Classify(
                img_pb.ClassifyRequest(model_name="lenet", images=[png.read_bytes()], top_k=5),
                metadata=metadata,
            )
            top5 = [c.label for c in reply.results[0].classes]
            if top5[0] == str(target):
                return Digit(str(target), png, top5)
    raise AssertionError(f"the exported LeNet labels none of the {len(pngs)} digits {DIGIT} correctly")


@pytest.fixture
async def lenet_server(exported: Path) -> AsyncIterator[InferenceServer]:
    instance, _ = await create_server(make_settings(exported))
    try:
        yield instance
    finally:
        await instance.stop(0)


@pytest.fixture
async def lenet_auth_server(exported: Path) -> AsyncIterator[InferenceServer]:
    instance, _ = await create_server(make_settings(exported, auth_token=TOKEN))
    try:
        yield instance
    finally:
        await instance.stop(0)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    )
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


# -- steps (blocking: run in a thread while the server runs on the test's loop) ---------------------


def stats(server: InferenceServer, model: str, token: str | None = None) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/v2/models/{model}/stats")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        document: dict[str, Any] = json.load(response)
    return document["model_stats"][0]["inference_stats"]


def wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT_S)


def check_listed(driver: WebDriver, exported: Path) -> None:
    """The summary lists lenet as READY with version 1 loaded, and the version's metadata."""
    row = wait(driver).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, '#models tr[data-model="lenet"]'))
    )
    assert "READY" in row.text
    version = modelrepo.read_version(exported, "lenet", 1)
    article = driver.find_element(By.CSS_SELECTOR, 'article[data-model="lenet"][data-version="1"]')
    assert "loaded" in article.find_element(By.TAG_NAME, "h3").text
    assert f"ONNX {version.metadata['test_accuracy']['onnx']:.2%}" in article.text
    assert "ONNX vs PyTorch passed" in article.text
    # The figures load (through the figure route, with the cookie when there is a token).
    images = article.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(images) == 2
    for image in images:
        driver.execute_script("arguments[0].scrollIntoView()", image)
        wait(driver).until(loaded(image), f"{image.get_attribute('src')} did not load")
        assert image.get_attribute("alt")
    driver.execute_script("window.scrollTo(0, 0)")


def loaded(image: WebElement) -> Callable[[WebDriver], bool]:
    def done(driver: WebDriver) -> bool:
        return bool(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))

    return done


def upload(driver: WebDriver, digit: Digit) -> tuple[str, list[str]]:
    """Upload the digit through the page's form; return the top label and the top-5 it shows."""
    Select(driver.find_element(By.ID, "classify-model")).select_by_value("lenet")
    driver.find_element(By.ID, "classify-file").send_keys(str(digit.png))
    driver.find_element(By.ID, "classify-submit").click()
    top = wait(driver).until(ec.visibility_of_element_located((By.ID, "classify-top")))
    wait(driver).until(lambda d: top.text.strip() != "")
    error = driver.find_element(By.ID, "classify-error")
    assert not error.is_displayed(), error.text
    rows = driver.find_elements(By.CSS_SELECTOR, "#classify-classes tbody tr")
    return top.text.strip(), [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows]


def check_live_counts(driver: WebDriver, server: InferenceServer, token: str | None = None) -> None:
    """The summary's success count follows the server's statistics (polled by the page)."""
    expected = str(stats(server, "lenet", token)["success"]["count"])
    cell = driver.find_element(By.CSS_SELECTOR, '#models tr[data-model="lenet"] [data-stat="success"]')
    wait(driver).until(lambda d: cell.text == expected)
    assert "live" in driver.find_element(By.ID, "live-status").text


# -- tests ------------------------------------------------------------------------------------------


async def test_page_lists_lenet_and_classifies_an_uploaded_digit(
    lenet_server: InferenceServer,
    browser: WebDriver,
    exported: Path,
    digit_pngs: list[tuple[int, Path]],
    tmp_path: Path,
) -> None:
    digit = await pick_digit(lenet_server.port, digit_pngs)
    url = f"http://127.0.0.1:{lenet_server.http_port}/"

    def steps() -> tuple[str, list[str]]:
        browser.get(url)
        assert browser.title == "cnnserve: models"
        check_listed(browser, exported)
        shown = upload(browser, digit)
        check_live_counts(browser, lenet_server)
        browser.save_screenshot(str(tmp_path / "model_page.png"))
        return shown

    top, top5 = await asyncio.to_thread(steps)
    assert top == digit.label
    assert top5 == digit.grpc_top5
    assert Image.open(tmp_path / "model_page.png").size[0] > 0


async def test_page_asks_for_the_token_then_works(
    lenet_auth_server: InferenceServer,
    browser: WebDriver,
    exported: Path,
    digit_pngs: list[tuple[int, Path]],
    tmp_path: Path,
) -> None:
    digit = await pick_digit(lenet_auth_server.port, digit_pngs, TOKEN)
    url = f"http://127.0.0.1:{lenet_auth_server.http_port}/"

    def steps() -> tuple[str, list[str]]:
        browser.get(url)
        field = wait(browser).until(ec.visibility_of_element_located((By.ID, "token")))
        assert "lenet" not in browser.page_source
        assert not browser.find_elements(By.ID, "models")
        field.send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
        wait(browser).until(ec.presence_of_element_located((By.ID, "models")))
        cookie = browser.get_cookie("cnnserve_token")
        assert cookie is not None and cookie["value"] == TOKEN and cookie["sameSite"] == "Strict"
        check_listed(browser, exported)
        shown = upload(browser, digit)
        check_live_counts(browser, lenet_auth_server, TOKEN)
        browser.save_screenshot(str(tmp_path / "model_page_auth.png"))
        return shown

    top, top5 = await asyncio.to_thread(steps)
    assert top == digit.label
    assert top5 == digit.grpc_top5
