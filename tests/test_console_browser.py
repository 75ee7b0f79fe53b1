"""The web console in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, driven through Selenium) loads the page from a real router's HTTP
port, sends the example screenshot and CT, records a voice message from a fake microphone
(Chromium's, playing examples/voice.wav), and checks what the page shows. A screenshot
of each page is saved (MODALMESH_CONSOLE_SCREENSHOTS=DIR keeps them; docs/console.png is one)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from modalmesh.up import free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def console(mesh):
    port = free_port()
    handle = mesh.start_router(http_port=port)
    yield f"http://127.0.0.1:{port}/"
    handle.stop(grace=0.5)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("headless Chromium is not installed (`make setup-browser`: apt install chromium chromium-driver, as root)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(flag)
    # The microphone: granted without asking, and playing the example voice message.
    for flag in ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={EXAMPLES / 'voice.wav'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def ask(browser, console: str, task: str, text: str, image: Path, shot: Path) -> str:
    """Fill the form, send it, wait for the whole answer; the answer panel's text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(console)
    WebDriverWait(browser, 30).until(lambda b: len(Select(b.find_element(By.ID, "task")).options) >= 2)
    Select(browser.find_element(By.ID, "task")).select_by_value(task)
    browser.find_element(By.ID, "text").send_keys(text)
    picker = browser.find_element(By.ID, "image")
    browser.execute_script("arguments[0].hidden = false", picker)  # the drop zone's own file input
    picker.send_keys(str(image))
    # Drawn at once, or (DICOM) said to be shown once read.
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "image-preview").is_displayed() or b.find_element(By.ID, "image-note").text)
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 120).until(lambda b: "Timings" in b.find_element(By.ID, "answer").text)  # the final event is in
    browser.save_screenshot(str(shot))
    return browser.find_element(By.ID, "answer").text


def test_the_console_shows_a_triage_answer_and_a_ct_report(browser, console, tmp_path):
    keep = Path(os.environ.get("MODALMESH_CONSOLE_SCREENSHOTS", tmp_path))
    keep.mkdir(parents=True, exist_ok=True)
    message = "I tried to pay three times and it keeps failing"
    shown = ask(browser, console, "screenshot_triage", message, EXAMPLES / "screenshot.png", keep / "console-triage.png")
    first = shown.splitlines()[0]
    assert first.split(" ")[0] in ("payment", "uncertain"), shown
    assert "confidence" in shown and "Modalities" in shown and "Attention mass" in shown
    assert any(line.startswith("image used") for line in shown.splitlines()), shown
    assert (keep / "console-triage.png").stat().st_size > 10_000
    from selenium.webdriver.common.by import By

    boxes = browser.find_elements(By.CSS_SELECTOR, "#boxes div")
    assert boxes and any("status" in (box.get_attribute("class") or "") for box in boxes)  # OCR's lines, the status message marked
    shown = ask(browser, console, "medical_report", (EXAMPLES / "record.txt").read_text(), EXAMPLES / "ct.dcm", keep / "console-ct.png")
    assert shown.splitlines()[0].split(" ")[0] in ("normal", "nodule", "mass", "uncertain") and "Impression:" in shown, shown
    # The DICOM slice, which the browser cannot draw, is shown as read, its lesions circled with their size.
    slice_shown = browser.find_element(By.ID, "image-preview")
    assert (slice_shown.get_attribute("src") or "").startswith("data:image/png;base64,") and slice_shown.is_displayed()
    assert "Measured lesions" in shown
    circled = browser.find_elements(By.CSS_SELECTOR, "#boxes div.lesion")
    assert circled and all(" mm, " in circle.text for circle in circled)
    assert circled[0].size["width"] > 3 and circled[0].location["x"] >= slice_shown.location["x"]


def test_a_voice_message_recorded_in_the_console_is_heard(browser, console):
    """Chromium records WebM, which the audio encoder does not read: the console sends the
    recording as WAV, and the answer quotes what was said."""
    import time

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(console)
    WebDriverWait(browser, 30).until(lambda b: len(Select(b.find_element(By.ID, "task")).options) >= 2)
    Select(browser.find_element(By.ID, "task")).select_by_value("screenshot_triage")
    browser.find_element(By.ID, "text").send_keys("please help")
    browser.find_element(By.ID, "record").click()
    time.sleep(4.0)  # the example message lasts 4.1 s
    browser.find_element(By.ID, "record").click()
    WebDriverWait(browser, 15).until(lambda b: b.execute_script("return inputs.audio && inputs.audio.type") == "audio/wav")
    assert "sent as WAV" in browser.find_element(By.ID, "audio-drop").text
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 120).until(lambda b: "Timings" in b.find_element(By.ID, "answer").text)
    shown = browser.find_element(By.ID, "answer").text
    assert any(line.startswith("audio used") for line in shown.splitlines()), shown
    assert "Voice message (transcript)" in shown and "payment" in shown.split("Voice message (transcript)")[1].lower(), shown
