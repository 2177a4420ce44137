"""The web page at `/`, driven in headless Chromium against the real server.

Debian's Chromium (`apt-get install chromium`) is driven by Playwright for Python; Playwright's
own browser download is not needed. The tests skip only when /usr/bin/chromium is absent. The
Chinese screenshots need a CJK font (`apt-get install fonts-wqy-microhei`), or they show boxes.
"""

import json
import math
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
DIGITS = json.loads((Path(__file__).resolve().parents[1] / "app/static/digits.json").read_text())
TRAINING = len(DIGITS["train"]["labels"])
HELD_OUT = len(DIGITS["held_out"]["labels"])
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# The fixed colour scales of app/static (inside.js, explain.js): limit, signed, gamma.
CONV1_SCALE = (0.5, True, 1.0)
ACTIVATION_SCALE = (4.0, False, 0.5)
SALIENCY_SCALE = (0.05, True, 0.5)
SEQUENTIAL = [(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)]
# Latin words that may stay in Chinese headings, labels and buttons: names and code.
KEPT_IN_CHINESE = {
    "lenet", "serve", "LeNet", "PyTorch", "API", "token", "scikit", "learn", "conv", "fc",
    "ReLU", "logit", "weight", "bias", "SGD", "lr", "GET", "POST", "PUT", "model", "params",
    "Adam", "RMSprop", "torch",
}  # fmt: skip

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


def open_page(
    browser: Any,
    url: str,
    viewport: dict[str, int] = DESKTOP,
    locale: str = "en-US",
    **options: Any,
) -> tuple[Any, Any, PageRecord]:
    """A new browser context and its tab at `url`, loaded until the page says it is ready."""
    context = browser.new_context(viewport=viewport, locale=locale, **options)
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
    tab.goto(url)
    tab.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    return context, tab, record


@pytest.fixture
def page(browser: Any, server: LiveServer) -> Iterator[tuple[Any, PageRecord]]:
    """The page at `/` on a desktop screen in English."""
    context, tab, record = open_page(browser, server.url + "/")
    yield tab, record
    context.close()


def draw_stroke(tab: Any, points: list[tuple[float, float]]) -> None:
    """Drag the mouse through `points`, given as fractions of the drawing pad's size."""
    tab.locator("#pad").scroll_into_view_if_needed()
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


def set_optimizer(server: LiveServer, body: dict[str, Any]) -> None:
    """PUT /optimizer as another client would."""
    with server.client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert client.put("/optimizer", json=body).status_code == 200


def weights(server: LiveServer) -> tuple[dict[str, Any], bytes]:
    """GET /params/export without its metadata (which names the version): tensor headers, bytes."""
    with server.client() as client:
        blob = client.get("/params/export").content
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    header.pop("__metadata__", None)
    return header, blob[8 + size :]


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


def js_round(x: float) -> int:
    """JavaScript's Math.round (halves go up), which Python's round does not do."""
    return math.floor(x + 0.5)


def colour_of(value: float, scale: tuple[float, bool, float]) -> tuple[int, int, int]:
    """The page's colour for `value` on a fixed scale (plots.js colourOf), computed here."""
    limit, signed, gamma = scale
    t = max(-1.0 if signed else 0.0, min(1.0, value / limit))
    p = math.copysign(abs(t) ** gamma, t)
    if signed:
        end = (202, 44, 36) if p >= 0 else (33, 92, 196)
        r, g, b = (js_round(255 + (c - 255) * abs(p)) for c in end)
        return r, g, b
    at = p * (len(SEQUENTIAL) - 1)
    i = min(len(SEQUENTIAL) - 2, math.floor(at))
    f = at - i
    r, g, b = (
        js_round(c + (d - c) * f) for c, d in zip(SEQUENTIAL[i], SEQUENTIAL[i + 1], strict=True)
    )
    return r, g, b


def assert_colour(seen: list[int], value: float, scale: tuple[float, bool, float]) -> None:
    """A pixel shows `value` on `scale`, to one level of rounding."""
    expected = colour_of(value, scale)
    assert all(abs(a - b) <= 1 for a, b in zip(seen[:3], expected, strict=True)), (
        value,
        seen,
        expected,
    )


def too_wide(tab: Any) -> list[str]:
    """Every element that reaches past the right edge of the viewport, except inside a box that
    scrolls sideways on its own (code as the tutorial writes it, wide tables of numbers)."""
    result: list[str] = tab.evaluate(
        """() => [...document.querySelectorAll('body *')]
          .filter((e) => e.getClientRects().length)
          .filter((e) => {
            for (let p = e.parentElement; p; p = p.parentElement) {
              if (['auto', 'scroll'].includes(getComputedStyle(p).overflowX)) return false;
            }
            return true;
          })
          .map((e) => [e, Math.round(e.getBoundingClientRect().right)])
          .filter(([, right]) => right > innerWidth)
          .map(([e, right]) => `${e.tagName}#${e.id}.${e.className}: ${right}`)"""
    )
    return result


def in_viewport(tab: Any, selector: str) -> bool:
    """Whether the element is wholly inside the viewport."""
    inside: bool = tab.evaluate(
        """(selector) => {
          const r = document.querySelector(selector).getBoundingClientRect();
          return r.width > 0 && r.top >= 0 && r.left >= 0 &&
            r.bottom <= innerHeight && r.right <= innerWidth;
        }""",
        selector,
    )
    return inside


def test_api_errors_are_shown_and_change_nothing(
    page: tuple[Any, PageRecord], server: LiveServer
) -> None:
    tab, record = page
    before = served(server)
    draw_stroke(tab, SEVEN)
    tab.click("#label-buttons button[data-label='7']")
    tab.wait_for_selector("#error:not([hidden])", timeout=WAIT_MS)
    message = tab.text_content("#error-text")
    # Teaching sets the shown optimizer first: the first refused request is that PUT.
    assert re.search(r"(PUT /optimizer|POST /train-step): 401", message)
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
    set_optimizer(server, {"name": "sgd", "lr": 0.01})

    # The architecture, from GET /model.
    assert "Conv2d(1, 6, kernel_size=(5, 5)" in tab.text_content("#model-repr")
    assert tab.locator("#layers tr").count() == 5
    assert tab.text_content("#total-params") == "61,706"

    # The presets come from GET /optimizers, each with its learning rate in the field beside it.
    with server.client() as client:
        presets = client.get("/optimizers").json()["presets"]
    options = tab.eval_on_selector_all("#optimizer option", "os => os.map((o) => o.value)")
    assert options == [*presets, "keep"]
    for key, preset in presets.items():
        tab.select_option("#optimizer", key)
        assert float(tab.input_value("#lr")) == preset["lr"]
    tab.select_option("#optimizer", "adam")

    # Draw: ten bars that add up to one, a predicted digit, and the version that answered. The
    # untrained net is said to be guessing.
    draw_stroke(tab, SEVEN)
    wait_for_text(tab, "prediction-info", "answered by version ")
    percents = [
        float(text.rstrip("%")) for text in tab.locator("#bars .bar-value").all_text_contents()
    ]
    assert len(percents) == 10
    assert sum(percents) == pytest.approx(100, abs=0.6)
    predicted = int(tab.text_content("#prediction"))
    assert percents[predicted] == max(percents)
    assert tab.locator("#bars .bar-row.top").count() == 1
    assert max(percents) < 15 and tab.is_visible("#untrained-note")
    assert "not trained yet" in tab.text_content("#untrained-note")
    assert tab.text_content("#prediction-mini") == f"{predicted}?"
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

    # The filters before training, on the fixed scale: remember one pixel's colour.
    tab.click("#refresh-params")
    wait_for_text(tab, "params-info", f"version {served(server)['version']},")
    assert tab.get_attribute("#conv1-scale", "data-ticks") == "≤-0.5 -0.25 0 0.25 ≥0.5"

    # Train: the optimizer the page shows is set, the curve gets points, the version grows.
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
    accuracy = re.fullmatch(
        rf"(\d+\.\d)% \((\d+)/{HELD_OUT}, step (\d+)\)", tab.text_content("#accuracy")
    )
    assert accuracy and int(accuracy[3]) == stopped["step"]
    assert re.fullmatch(
        rf"\d+\.\d% \(\d+/{HELD_OUT}, step \d+\)", tab.text_content("#train-accuracy")
    )
    epochs = float(tab.text_content("#epoch"))
    assert epochs == pytest.approx((stopped["step"] - start["step"]) * 32 / TRAINING, abs=0.05)

    # The loss chart: a log axis with a few labelled ticks, step numbers along x.
    y_ticks = tab.get_attribute("#loss-chart", "data-y-ticks").split()
    assert 2 <= len(y_ticks) <= 6
    x_ticks = [int(s) for s in tab.get_attribute("#loss-chart", "data-x-ticks").split()]
    assert 2 <= len(x_ticks) <= 8
    assert all(start["step"] <= s <= stopped["step"] for s in x_ticks)

    # The confusion matrix counts every held-out digit, its diagonal the right ones; the gallery
    # shows the wrong ones, and one click loads one into the drawing pad.
    counts = [
        [int(cell) for cell in row]
        for row in tab.eval_on_selector_all(
            "#confusion tr:not(:first-child)",
            "rows => rows.map((r) => [...r.querySelectorAll('td')].map((td) => td.textContent))",
        )
    ]
    assert len(counts) == 10 and all(len(row) == 10 for row in counts)
    assert sum(map(sum, counts)) == HELD_OUT
    correct = sum(counts[i][i] for i in range(10))
    assert correct == int(accuracy[2])
    wrong = tab.locator("#gallery button.digit")
    assert wrong.count() == min(48, HELD_OUT - correct) > 0
    first = wrong.first
    truth, guessed = (
        int(first.get_attribute("data-truth")),
        int(first.get_attribute("data-predicted")),
    )
    assert truth != guessed
    first.click()
    wait_for_text(tab, "prediction", str(guessed), exact=True)

    # Look inside: the filters drawn are the served weights on the fixed scale ±0.5, whatever
    # the largest weight is now; every parameter has a histogram of its values and gradient.
    tab.click("#refresh-params")
    wait_for_text(tab, "params-info", f"version {stopped['version']},")
    with server.client() as client:
        conv1 = client.get("/params", params={"name": "conv1.weight", "values": "true"}).json()
    weights_now = conv1["parameters"][0]["values"]  # (6, 1, 5, 5)
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
    for f in range(6):
        for k in range(25):
            assert_colour(colours[f][k], weights_now[f][0][k // 5][k % 5], CONV1_SCALE)
    conv2 = tab.evaluate(
        "() => { const c = document.getElementById('conv2-filters'); return [c.width, c.height]; }"
    )
    assert conv2 == [16 * 25 + 15 * 4, 6 * 25 + 5 * 4]
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
    tab.click("#clear")
    draw_stroke(tab, SEVEN)
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
    context, tab, _ = open_page(
        browser, server.url + "/", viewport={"width": 800, "height": 900}, has_touch=True
    )
    try:
        box = tab.locator("#pad").bounding_box()
        # A tap is a touch pointer's down and up: a dot, which is a drawing the model can read.
        tab.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        wait_for_text(tab, "prediction-info", "answered by version")
        assert tab.text_content("#prediction") in [str(digit) for digit in range(10)]
        assert tab.is_enabled("#label-buttons button[data-label='0']")
    finally:
        context.close()


def visible_words(tab: Any, selector: str) -> list[str]:
    """The Latin words in the visible text, code left out, of every element matching `selector`."""
    texts: list[str] = tab.eval_on_selector_all(
        selector,
        """els => els.filter((e) => e.getClientRects().length && !e.closest('#language'))
          .map((e) => {
            const copy = e.cloneNode(true);  // code stays code in every language
            for (const code of copy.querySelectorAll('code')) code.remove();
            return copy.textContent;
          })""",
    )
    return re.findall(r"[A-Za-z]{2,}", " ".join(texts))


CHROME_TEXT = "h1, h2, h3, legend, label > span, button, th, figcaption, dt, caption, .subtitle"


def test_languages_switch_every_string_and_persist(browser: Any, server: LiveServer) -> None:
    # The browser's language decides at first: Chinese for zh-TW, English otherwise.
    context, tab, record = open_page(browser, server.url + "/", locale="zh-TW")
    try:
        assert tab.evaluate("document.documentElement.lang") == "zh-TW"
        assert tab.input_value("#language") == "zh-TW"

        # Both languages have the same keys (another language is one more file with them).
        keys = tab.evaluate(
            """async () => {
              const en = (await import('/static/i18n/en.js')).default;
              const zh = (await import('/static/i18n/zh-TW.js')).default;
              return [Object.keys(en).sort(), Object.keys(zh).sort()];
            }"""
        )
        assert keys[0] == keys[1] and len(keys[0]) > 100

        draw_stroke(tab, SEVEN)
        tab.wait_for_function(
            "() => document.getElementById('prediction').textContent !== '–'", timeout=WAIT_MS
        )
        tab.select_option("#language", "en")
        assert tab.evaluate("document.documentElement.lang") == "en"
        english = tab.evaluate("document.body.innerText")
        # Only the name of the other language stays in its own script.
        assert not re.search(r"[\u3000-\u9fff\uff00-\uffef]", english.replace("繁體中文", ""))
        assert "answered by version" in tab.text_content("#prediction-info")
        tab.screenshot(path=str(ARTIFACTS / "page-en.png"))

        tab.select_option("#language", "zh-TW")
        words = visible_words(tab, CHROME_TEXT)
        assert set(words) <= KEPT_IN_CHINESE, set(words) - KEPT_IN_CHINESE
        # Text the page wrote after loading follows the switch too.
        assert "由版本" in tab.text_content("#prediction-info")
        assert "猜" in tab.text_content("#untrained-note")
        assert tab.get_attribute("#pad", "aria-label").startswith("手寫區")
        assert tab.title().startswith("lenet-serve：")
        ARTIFACTS.mkdir(exist_ok=True)
        tab.screenshot(path=str(ARTIFACTS / "page-zh-TW.png"))

        # The choice is remembered over the browser's language.
        tab.select_option("#language", "en")
        tab.reload()
        tab.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        assert tab.evaluate("document.documentElement.lang") == "en"
        english_words = visible_words(tab, CHROME_TEXT)
        assert {"Draw", "Prediction", "Train", "Architecture"} <= set(english_words)
        tab.select_option("#language", "zh-TW")
        tab.reload()
        tab.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        assert tab.evaluate("document.documentElement.lang") == "zh-TW"
        assert tab.text_content("#draw-title") == "寫一個數字"
        assert record.page_errors == [] and record.console_errors == []
    finally:
        context.close()


@pytest.mark.parametrize("language", ["en", "zh-TW"])
def test_phone_nothing_overflows_and_figures_stay_in_sight(
    browser: Any, server: LiveServer, language: str
) -> None:
    context, tab, record = open_page(
        browser, server.url + "/", viewport=PHONE, locale=language, has_touch=True
    )
    try:
        assert tab.evaluate("document.documentElement.lang") == language
        assert too_wide(tab) == []
        assert tab.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

        # While drawing, the guess is in sight beside the pad.
        draw_stroke(tab, SEVEN)
        tab.wait_for_function(
            "() => document.getElementById('prediction-mini').textContent !== '–'", timeout=WAIT_MS
        )
        assert in_viewport(tab, "#pad") and in_viewport(tab, "#prediction-mini")
        tab.screenshot(path=str(ARTIFACTS / f"page-phone-{language}.png"))

        # Every view filled in (figures, histograms, confusion matrix): still nothing too wide.
        tab.click("#refresh-params")
        tab.wait_for_selector("#histograms tr", timeout=WAIT_MS)
        assert too_wide(tab) == []

        # While training, the loss chart is in sight with the buttons that run it.
        tab.fill("#token", TOKEN)
        tab.locator("#start").scroll_into_view_if_needed()
        tab.click("#start")
        tab.wait_for_function(
            "() => Number(document.getElementById('loss-chart').dataset.points) >= 3",
            timeout=WAIT_MS,
        )
        assert in_viewport(tab, "#stop")
        chart = tab.evaluate(
            """() => { const r = document.getElementById('loss-chart').getBoundingClientRect();
                       return [r.top, r.bottom, innerHeight]; }"""
        )
        assert chart[0] >= 0 and chart[1] <= chart[2]
        tab.click("#stop")
        tab.wait_for_function("() => document.getElementById('stop').disabled", timeout=WAIT_MS)
        assert too_wide(tab) == []
        tab.screenshot(path=str(ARTIFACTS / f"page-phone-{language}-full.png"), full_page=True)
        assert record.page_errors == [] and record.console_errors == []
    finally:
        context.close()


def test_teach_uses_the_shown_optimizer_and_learning_rate(
    page: tuple[Any, PageRecord], server: LiveServer
) -> None:
    tab, _ = page
    set_optimizer(server, {"name": "sgd", "lr": 0.01})
    tab.fill("#token", TOKEN)
    tab.select_option("#optimizer", "adam")
    tab.fill("#lr", "0.002")
    draw_stroke(tab, SEVEN)
    before = served(server)
    tab.click("#label-buttons button[data-label='7']")
    wait_for_text(tab, "teach-status", f"step {before['step'] + 1},")
    assert "adam, lr 0.002" in tab.text_content("#teach-status")
    with server.client() as client:
        optimizer = client.get("/optimizer").json()
    assert optimizer["name"] == "adam" and optimizer["lr"] == 0.002
    assert "adam, lr 0.002" in tab.text_content("#server-optimizer")

    # "Keep the server's": teaching leaves another client's choice alone.
    set_optimizer(server, {"name": "sgd", "lr": 0.03, "momentum": 0.9})
    tab.select_option("#optimizer", "keep")
    tab.click("#label-buttons button[data-label='7']")
    wait_for_text(tab, "teach-status", f"step {before['step'] + 2},")
    assert "sgd, lr 0.03, momentum 0.9" in tab.text_content("#teach-status")


def test_reset_asks_first_and_undo_restores_the_weights(
    page: tuple[Any, PageRecord], server: LiveServer
) -> None:
    tab, record = page
    tab.fill("#token", TOKEN)
    draw_stroke(tab, SEVEN)
    tab.click("#label-buttons button[data-label='1']")  # weights that are not the seed's
    wait_for_text(tab, "teach-status", "Sent as")
    original = weights(server)

    # Reset asks; Cancel changes nothing.
    tab.click("#reset")
    assert tab.is_visible("#reset-confirm")
    tab.click("#reset-no")
    assert tab.is_hidden("#reset-confirm")
    assert weights(server) == original

    # Yes: new weights, the stale figures are gone, and Undo is offered.
    tab.click("#reset")
    tab.click("#reset-yes")
    tab.wait_for_selector("#reset-done:not([hidden])", timeout=WAIT_MS)
    assert weights(server)[1] != original[1]
    assert tab.get_attribute("#loss-chart", "data-points") == "0"
    assert tab.text_content("#loss") == "–"
    reset_version = served(server)["version"]
    tab.wait_for_function(
        "([v]) => Number(document.getElementById('confusion').dataset.step) === 0",
        arg=[0],
        timeout=WAIT_MS,
    )

    # Fresh weights and the tutorial's plain SGD at lr 0.01: the loss stays flat, and the page
    # says so.
    assert tab.is_hidden("#flat-note")
    tab.select_option("#optimizer", "sgd")
    tab.click("#start")
    tab.wait_for_function(
        "() => Number(document.getElementById('loss-chart').dataset.points) >= 32",
        timeout=WAIT_MS * 2,
    )
    tab.click("#stop")
    wait_for_text(tab, "train-state", "stopped", exact=True)
    assert tab.is_visible("#flat-note")
    assert "still flat" in tab.text_content("#flat-note")

    # Undo, even after those steps: exactly the weights before the reset, byte for byte.
    tab.click("#undo")
    wait_for_text(tab, "reset-done-text", "Undone")
    assert weights(server) == original
    assert served(server)["version"] > reset_version
    assert tab.is_hidden("#undo")
    assert record.page_errors == []


def step_numbers(tab: Any) -> list[list[float]]:
    """The rows of the Step view: element, before, gradient, before - lr x gradient, after."""
    rows: list[list[str]] = tab.eval_on_selector_all(
        "#step-rows tr", "rows => rows.map((r) => [...r.cells].map((c) => c.textContent))"
    )
    return [[float(cell) for cell in row] for row in rows]


def test_one_step_number_by_number(page: tuple[Any, PageRecord], server: LiveServer) -> None:
    tab, record = page
    tab.fill("#token", TOKEN)
    tab.select_option("#optimizer", "sgd")
    assert tab.is_disabled("#step-run")
    draw_stroke(tab, SEVEN)
    tab.wait_for_function("() => !document.getElementById('step-run').disabled", timeout=WAIT_MS)
    assert tab.input_value("#step-param") == "conv1.bias"
    tab.select_option("#step-label", "7")
    before = served(server)
    tab.click("#step-run")
    tab.wait_for_selector("#step-verdict:not([hidden])", timeout=WAIT_MS)
    assert served(server)["step"] == before["step"] + 1
    lr = float(tab.get_attribute("#step-table", "data-lr"))
    assert lr == 0.01
    rows = step_numbers(tab)
    assert [row[0] for row in rows] == list(range(6))
    with server.client() as client:
        bias = client.get(
            "/params", params={"name": "conv1.bias", "values": "true", "grads": "true"}
        ).json()["parameters"][0]
    for (_, was, grad, expected, now), value, served_grad in zip(
        rows, bias["values"], bias["grad"], strict=True
    ):
        assert now == pytest.approx(value, abs=1e-7)  # the numbers shown are the served ones
        assert grad == pytest.approx(served_grad, rel=1e-6, abs=1e-12)
        assert expected == pytest.approx(was - lr * grad, abs=1e-7)
        assert now == pytest.approx(was - lr * grad, abs=1e-6)  # the update rule, to 6 digits
    assert tab.get_attribute("#step-verdict", "data-holds") == "true"
    assert "holds for all 6 numbers" in tab.text_content("#step-verdict")

    # With Adam the rule does not hold, and the page says why.
    tab.select_option("#optimizer", "adam")
    tab.select_option("#step-param", "fc3.weight")
    tab.click("#step-run")
    wait_for_text(tab, "step-status", "fc3.weight")
    tab.wait_for_function(
        "() => document.getElementById('step-verdict').textContent.includes('Adam')",
        timeout=WAIT_MS,
    )
    assert tab.get_attribute("#step-verdict", "data-holds") == "false"
    assert len(step_numbers(tab)) == 10
    assert "840" in tab.text_content("#step-status")
    assert record.page_errors == []


SNAPSHOT_JS = """() => {
  const pixels = (c) => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const rows = [];
    for (let y = 0; y < c.height; y++) {
      const row = [];
      for (let x = 0; x < c.width; x++) {
        const i = (y * c.width + x) * 4;
        row.push([d[i], d[i + 1], d[i + 2]]);
      }
      rows.push(row);
    }
    return rows;
  };
  const view = document.getElementById('explain-view');
  const maps = {};
  for (const c of document.querySelectorAll('#activations canvas')) {
    (maps[c.dataset.layer] ??= []).push(pixels(c));
  }
  return {
    sent: view.dataset.sent, version: Number(view.dataset.version), maps,
    saliency: pixels(document.getElementById('saliency')),
    logits: document.getElementById('act-fc3').getAttribute('aria-label'),
  };
}"""


def explain_snapshot(tab: Any) -> dict[str, Any]:
    """What the view shows, read at one instant: the image sent, its version and every canvas."""
    snapshot: dict[str, Any] = tab.evaluate(SNAPSHOT_JS)
    snapshot["sent"] = json.loads(snapshot["sent"])
    return snapshot


def test_inside_your_drawing_shows_every_layer_and_the_saliency(
    page: tuple[Any, PageRecord], server: LiveServer
) -> None:
    tab, record = page
    draw_stroke(tab, SEVEN)
    tab.wait_for_selector("#explain-view[data-version]", timeout=WAIT_MS)
    view = explain_snapshot(tab)
    image = view["sent"]
    with server.client() as client:
        answer = client.post("/explain", json={"inputs": image, "version": view["version"]}).json()
    assert answer["version"] == view["version"]
    activations = answer["activations"]

    # Every layer's maps, each pixel on the one fixed scale: conv1's six 28x28, pool1's six
    # 14x14, conv2's sixteen 10x10, pool2's sixteen 5x5, and fc1, fc2 as strips.
    for layer, channels, side in [
        ("conv1", 6, 28),
        ("pool1", 6, 14),
        ("conv2", 16, 10),
        ("pool2", 16, 5),
    ]:
        maps = view["maps"][layer]
        assert len(maps) == channels, layer
        for c, rows in enumerate(maps):
            assert len(rows) == side and len(rows[0]) == side
            for y in range(side):
                for x in range(side):
                    assert_colour(rows[y][x], activations[layer][c][y][x], ACTIVATION_SCALE)
    for layer, n in [("fc1", 120), ("fc2", 84)]:
        (strip,) = view["maps"][layer]
        assert len(strip) == 1 and len(strip[0]) == n
        for x in range(n):
            assert_colour(strip[0][x], activations[layer][x], ACTIVATION_SCALE)
    assert any(v > 0 for v in activations["conv1"][2][10])  # not a test of black on black
    assert tab.get_attribute("#activation-scale", "data-ticks") == "0 0.25 1 2.3 ≥4"

    # The ten logits, as the API gives them.
    shown = [float(v) for v in re.findall(r"\d: (-?\d+\.\d{4})", view["logits"])]
    assert shown == pytest.approx(answer["outputs"], abs=1e-4)

    # The saliency over the drawing: gray where it is near zero, red or blue where it is not.
    saliency = view["saliency"]
    cell = len(saliency) // 32
    limit = SALIENCY_SCALE[0]
    for y in range(32):
        for x in range(32):
            value = answer["saliency"][y][x]
            t = max(-1.0, min(1.0, value / limit))
            a = abs(t) ** 0.5
            gray = js_round(max(0.0, min(1.0, image[y][x])) * 255)
            end = (202, 44, 36) if t >= 0 else (33, 92, 196)
            expected = [js_round(gray * (1 - a) + c * a) for c in end]
            seen = saliency[y * cell + cell // 2][x * cell + cell // 2]
            assert all(abs(s - e) <= 1 for s, e in zip(seen, expected, strict=True)), (y, x)
    assert max(abs(v) for row in answer["saliency"] for v in row) > 0

    # Click a map: it opens large, with its own name.
    tab.click("#activations canvas.map[data-layer='conv2'][data-channel='3']")
    tab.wait_for_selector("#map-dialog[open]", timeout=WAIT_MS)
    assert "conv2, channel 3 (10×10" in tab.text_content("#map-dialog-title")
    large = tab.evaluate("() => [document.getElementById('map-large').width]")
    assert large == [330]
    tab.screenshot(path=str(ARTIFACTS / "inside-dialog-en.png"))
    tab.click("#map-dialog button")
    assert tab.is_hidden("#map-dialog")

    # Throttled: fewer calls than the moves of the stroke, and the page reads nothing it changes.
    explains = [url for url in record.urls if url.endswith("/explain")]
    assert 1 <= len(explains) <= 12
    tab.locator("#explain-view").screenshot(path=str(ARTIFACTS / "inside-en.png"))
    assert record.page_errors == [] and record.console_errors == []
