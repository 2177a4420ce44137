"""The web page at `/`, driven in headless Chromium against the real server.

Debian's Chromium (`apt-get install chromium`) is driven by Playwright for Python; Playwright's
own browser download is not needed. The tests skip only when /usr/bin/chromium is absent.
"""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SEED, TEST_DEVICE
from tests.server import LiveServer, start_test_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "web-test-token"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WAIT_MS = 30_000
TRAIN_STEPS = 10  # steps to see before stopping: enough for a curve, quick on a busy CI box

pytestmark = [
    pytest.mark.browser,
    pytest.mark.server,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real server for the module, with an API token so the page must send it."""
    root = tmp_path_factory.mktemp("web")
    live = start_test_server(root, seed=SEED, device=TEST_DEVICE, api_token=TOKEN)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium, launched once for the module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), chromium_sandbox=False, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


class PageRecord:
    """What a page did besides rendering: the URLs it requested and the errors it raised."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []


@pytest.fixture
def page(browser: Any, server: LiveServer) -> Iterator[tuple[Any, PageRecord]]:
    """The page at `/`, loaded until its start-up requests are answered."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    tab = context.new_page()
    record = PageRecord()
    tab.on("request", lambda request: record.urls.append(request.url))
    tab.on("pageerror", lambda error: record.page_errors.append(str(error)))
    tab.on(
        "console",
        lambda message: (
            record.console_errors.append(message.text) if message.type == "error" else None
        ),
    )
    tab.goto(server.url + "/")
    tab.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    yield tab, record
    context.close()


def draw_stroke(tab: Any, points: list[tuple[float, float]]) -> None:
    """Drag the mouse through `points`, given as fractions of the drawing pad's size."""
    box = tab.locator("#pad").bounding_box()
    x, y = box["x"], box["y"]
    w, h = box["width"], box["height"]
    tab.mouse.move(x + points[0][0] * w, y + points[0][1] * h)
    tab.mouse.down()
    for px, py in points[1:]:
        tab.mouse.move(x + px * w, y + py * h, steps=4)
    tab.mouse.up()


SEVEN = [(0.25, 0.2), (0.75, 0.2), (0.55, 0.5), (0.4, 0.85)]


def served(server: LiveServer) -> dict[str, Any]:
    """The server's version and step right now."""
    with server.client() as client:
        model = client.get("/model").json()
    return {"version": model["version"], "step": model["step"]}


def wait_for_text(tab: Any, element_id: str, text: str, exact: bool = False) -> None:
    """Wait until the element's text contains `text` (or is exactly `text`)."""
    tab.wait_for_function(
        """([id, text, exact]) => {
          const content = document.getElementById(id).textContent;
          return exact ? content === text : content.includes(text);
        }""",
        arg=[element_id, text, exact],
        timeout=WAIT_MS,
    )


def shown_version(tab: Any) -> int:
    """The model version the page shows in its header."""
    return int(tab.text_content("#model-version"))


def test_api_errors_are_shown_and_change_nothing(
    page: tuple[Any, PageRecord], server: LiveServer
) -> None:
    tab, record = page
    before = served(server)
    draw_stroke(tab, SEVEN)
    tab.click("#label-buttons button[data-label='7']")
    tab.wait_for_selector("#error:not([hidden])", timeout=WAIT_MS)
    message = tab.text_content("#error-text")
    assert "POST /train-step: 401" in message
    assert "API token" in message
    assert "Not sent" in tab.text_content("#teach-status")

    # Start without the token: the page says why, stays stopped, and the weights do not move.
    tab.click("#error-dismiss")
    assert tab.is_hidden("#error")
    tab.click("#start")
    tab.wait_for_selector("#error:not([hidden])", timeout=WAIT_MS)
    assert "401" in tab.text_content("#error-text")
    wait_for_text(tab, "train-state", "stopped", exact=True)
    assert tab.is_enabled("#start") and tab.is_disabled("#stop")
    assert served(server) == before
    assert record.page_errors == []


def test_draw_train_look_inside_and_teach(page: tuple[Any, PageRecord], server: LiveServer) -> None:
    tab, record = page

    # The architecture, from GET /model.
    assert "Conv2d(1, 6, kernel_size=(5, 5)" in tab.text_content("#model-repr")
    assert tab.locator("#layers tr").count() == 5
    assert tab.text_content("#total-params") == "61,706"

    # Draw: ten bars that add up to one, a predicted digit, and the version that answered.
    draw_stroke(tab, SEVEN)
    tab.wait_for_function(
        "/answered by version \\d+/.test(document.getElementById('prediction-info').textContent)",
        timeout=WAIT_MS,
    )
    percents = [
        float(text.rstrip("%")) for text in tab.locator("#bars .bar-value").all_text_contents()
    ]
    assert len(percents) == 10
    assert sum(percents) == pytest.approx(100, abs=0.6)
    predicted = int(tab.text_content("#prediction"))
    assert percents[predicted] == max(percents)
    assert tab.locator("#bars .bar-row.top").count() == 1
    seen = tab.evaluate(
        """() => {
          const c = document.getElementById('seen');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let lit = 0;
          for (let i = 0; i < d.length; i += 4) if (d[i] > 128) lit++;
          return {w: c.width, h: c.height, lit};
        }"""
    )
    assert seen["w"] == 32 and seen["h"] == 32 and 20 < seen["lit"] < 400

    # Train: the optimizer the page chose is set, the curve gets points, the version grows.
    start = served(server)
    tab.fill("#token", TOKEN)
    tab.click("#start")
    tab.wait_for_function(
        """([steps, version]) =>
          Number(document.getElementById('loss-chart').dataset.points) >= steps &&
          Number(document.getElementById('model-version').textContent) >= version""",
        arg=[TRAIN_STEPS, start["version"] + TRAIN_STEPS],
        timeout=WAIT_MS,
    )
    assert "adam, lr 0.001" in tab.text_content("#server-optimizer")
    with server.client() as client:
        assert client.get("/optimizer").json()["name"] == "adam"

    # Stop: once the page says stopped, the version no longer grows.
    tab.click("#stop")
    wait_for_text(tab, "train-state", "stopped", exact=True)
    stopped = served(server)
    assert stopped["version"] >= start["version"] + TRAIN_STEPS
    tab.wait_for_timeout(700)
    assert served(server) == stopped
    assert shown_version(tab) == stopped["version"]
    assert re.fullmatch(r"\d+\.\d% \(\d+/359, step \d+\)", tab.text_content("#accuracy"))

    # Look inside: the filters drawn are the served weights (red where positive, blue where
    # negative), and every parameter has a histogram of its values and of its gradient.
    tab.click("#refresh-params")
    wait_for_text(tab, "params-info", f"version {stopped['version']},")
    with server.client() as client:
        conv1 = client.get("/params", params={"name": "conv1.weight", "values": "true"}).json()
    weights = conv1["parameters"][0]["values"]  # (6, 1, 5, 5)
    colours = tab.evaluate(
        """() => {
          const c = document.getElementById('conv1-filters');
          const ctx = c.getContext('2d');
          const cell = 40, gap = 8, px = cell / 5, out = [];
          for (let f = 0; f < 6; f++) {
            const row = [];
            for (let i = 0; i < 5; i++) for (let j = 0; j < 5; j++) {
              const x = f * (cell + gap) + j * px + px / 2, y = i * px + px / 2;
              row.push(Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3)));
            }
            out.push(row);
          }
          return out;
        }"""
    )
    largest = max(abs(v) for f in weights for line in f[0] for v in line)
    checked = 0
    for f in range(6):
        for k in range(25):
            value = weights[f][0][k // 5][k % 5]
            red, _, blue = colours[f][k]
            if abs(value) > 0.2 * largest:
                assert (red > blue) == (value > 0), (f, k, value, colours[f][k])
                checked += 1
    assert checked >= 20
    conv2_colours = tab.evaluate(
        """() => {
          const c = document.getElementById('conv2-filters');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          const distinct = new Set();
          for (let i = 0; i < d.length; i += 4) distinct.add(`${d[i]},${d[i+1]},${d[i+2]}`);
          return {w: c.width, h: c.height, distinct: distinct.size};
        }"""
    )
    assert conv2_colours["w"] > conv2_colours["h"] > 100
    assert conv2_colours["distinct"] > 200
    assert tab.locator("#histograms tr").count() == 10
    blank_histograms = tab.evaluate(
        """() => Array.from(document.querySelectorAll('#histograms canvas')).filter((c) => {
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          for (let i = 3; i < d.length; i += 4) if (d[i] > 0) return false;
          return true;
        }).length"""
    )
    assert blank_histograms == 0

    # Teach: one click on a label sends the drawing as one example, one step.
    tab.click("#label-buttons button[data-label='7']")
    wait_for_text(tab, "teach-status", f"step {stopped['step'] + 1},")
    assert served(server)["step"] == stopped["step"] + 1

    # Clear: the bars empty and the label buttons are disabled again.
    tab.click("#clear")
    wait_for_text(tab, "prediction", "–", exact=True)
    assert tab.is_disabled("#label-buttons button[data-label='0']")

    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)

    # Offline: everything the page loaded came from the server that served it.
    outside = [url for url in record.urls if not url.startswith((server.url, "data:"))]
    assert outside == []
    assert record.page_errors == []
    assert record.console_errors == []


def test_touch_draws_and_predicts(browser: Any, server: LiveServer) -> None:
    context = browser.new_context(viewport={"width": 800, "height": 900}, has_touch=True)
    try:
        tab = context.new_page()
        tab.goto(server.url + "/")
        tab.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        box = tab.locator("#pad").bounding_box()
        # A tap is a touch pointer's down and up: a dot, which is a drawing the model can read.
        tab.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        wait_for_text(tab, "prediction-info", "answered by version")
        assert tab.text_content("#prediction") in [str(digit) for digit in range(10)]
        assert tab.is_enabled("#label-buttons button[data-label='0']")
    finally:
        context.close()
