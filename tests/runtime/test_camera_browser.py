"""End to end in a real headless browser: Debian's chromium loads the camera page served over a
generated video, asks a question, and sees the streamed answer and its τ and tokens/s appear.

Skips when /usr/bin/chromium or /usr/bin/chromedriver is missing (`make test` installs them as root).
"""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)",
                allow_module_level=True)
pytest.importorskip("cv2", reason="the camera extra (opencv-python-headless) is not installed")
pytest.importorskip("fastapi", reason="the camera extra (fastapi) is not installed")
webdriver = pytest.importorskip("selenium.webdriver", reason="the camera extra (selenium) is not installed")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from runtime.camera.app import CameraApp  # noqa: E402
from runtime.camera.config import CameraConfig  # noqa: E402
from runtime.camera.synthetic import write_test_video  # noqa: E402

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1000,800")


@pytest.fixture(scope="module")
def page_url(exported_tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("camera_browser")
    video = write_test_video(folder / "door.avi", frames=20)
    config = CameraConfig(artifacts=exported_tiny[0], source=str(video), port=0, threads=1, max_new_tokens=8)
    app = CameraApp.from_config(config)
    handle = app.serve_in_thread()
    yield handle.url + "/"
    handle.stop()
    app.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def _ask(browser, question: str) -> None:
    box = browser.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    browser.find_element(By.ID, "send").click()


def test_page_streams_an_answer_about_the_video(browser, page_url):
    browser.get(page_url)
    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    wait.until(lambda b: b.execute_script("return document.getElementById('frame').naturalWidth") > 0)
    wait.until(lambda b: "live" in b.find_element(By.ID, "status").text)

    _ask(browser, "   ")
    wait.until(lambda b: "empty" in b.find_element(By.ID, "error").text)

    _ask(browser, "What is in the video?")  # the tiny tokenizer is near byte-level: short questions fit
    wait.until(lambda b: b.find_element(By.ID, "answer").get_attribute("data-state") in ("done", "error"))
    state = browser.find_element(By.ID, "answer").get_attribute("data-state")
    assert state == "done", browser.find_element(By.ID, "error").text
    assert browser.find_element(By.ID, "error").text == ""
    assert browser.find_element(By.ID, "answer").text.strip()
    metrics = browser.find_element(By.ID, "metrics").text
    assert "τ" in metrics and "tokens/s" in metrics
    assert browser.execute_script("return document.getElementById('frame').naturalWidth") == 96
