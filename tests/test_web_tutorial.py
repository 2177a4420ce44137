"""The tutorial page (/static/tutorial.html): every cell's button, run in headless Chromium
against the real server, shows what the API answers, printed as PyTorch prints it."""

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests import test_web as web
from tests.conftest import SEED, TEST_DEVICE
from tests.server import LiveServer, start_test_server

pytestmark = web.pytestmark
browser = web.browser
NUMBER = r"-?\d+\.\d{4}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server of its own, with an API token, for the tutorial's cells to change."""
    root = tmp_path_factory.mktemp("tutorial")
    live = start_test_server(root, seed=SEED, device=TEST_DEVICE, api_token=web.TOKEN)
    yield live
    live.stop()


def run_step(tab: Any, step: str) -> str:
    """Click the step's button and wait for its printed output."""
    tab.locator(f"#run-{step}").scroll_into_view_if_needed()
    tab.click(f"#run-{step}")
    tab.wait_for_selector(f"#step-{step}[data-done=true]", timeout=web.WAIT_MS)
    text: str = tab.text_content(f"#out-{step}")
    return text


def numbers(text: str) -> list[float]:
    """The four-decimal numbers in a printed tensor."""
    return [float(v) for v in re.findall(NUMBER, text)]


def bias(client: Any) -> dict[str, Any]:
    """conv1.bias with its values and gradient, from GET /params."""
    answer = client.get(
        "/params", params={"name": "conv1.bias", "values": "true", "grads": "true"}
    ).json()
    parameter: dict[str, Any] = answer["parameters"][0]
    return parameter


def test_every_tutorial_step_shows_what_the_api_answers(browser: Any, server: LiveServer) -> None:
    context, tab, record = web.open_page(browser, server.url + "/static/tutorial.html")
    client = server.client(headers={"Authorization": f"Bearer {web.TOKEN}"})
    try:
        tab.fill("#token", web.TOKEN)
        titles = tab.eval_on_selector_all(".tut-step", "cards => cards.map((c) => c.id)")
        steps = "net params forward backward accumulate loss graph grad sgd optim batch"
        assert titles == [f"step-{s}" for s in steps.split()]

        # print(net): the text of GET /model.
        assert run_step(tab, "net") == client.get("/model").json()["repr"]

        # len(params) and params[0].size().
        report = client.get("/params").json()
        shape = ", ".join(map(str, report["parameters"][0]["shape"]))
        assert run_step(tab, "params") == f"{report['count']}\ntorch.Size([{shape}])"
        assert tab.text_content("#out-params") == "10\ntorch.Size([6, 1, 5, 5])"

        # out = net(input) for a random 1x1x32x32 input: the ten outputs POST /predict gives.
        printed = run_step(tab, "forward")
        assert printed.startswith("tensor([[") and printed.endswith("grad_fn=<AddmmBackward0>)")
        sent = json.loads(tab.get_attribute("#out-forward", "data-sent"))
        assert len(sent) == 1 and len(sent[0]) == 1 and len(sent[0][0]) == 32
        outputs = client.post("/predict", json={"inputs": sent}).json()["outputs"][0]
        assert numbers(printed) == pytest.approx(outputs, abs=6e-5)

        # zero_grad, then backward with random gradients: conv1.bias.grad as the API holds it,
        # and as the API computes it again from the same input and gradients.
        printed = run_step(tab, "backward")
        held = bias(client)["grad"]
        assert numbers(printed.splitlines()[0]) == pytest.approx(held, abs=6e-5)
        body = json.loads(tab.get_attribute("#out-backward", "data-sent"))
        assert client.post("/zero-grad").status_code == 200
        assert client.post("/backward", json=body).status_code == 200
        assert bias(client)["grad"] == pytest.approx(held, rel=1e-5, abs=1e-7)

        # Without zero_grad the gradients add up: the second is twice the first.
        printed = run_step(tab, "accumulate")
        first, second = (numbers(line) for line in printed.splitlines())
        assert second == pytest.approx([2 * g for g in first], abs=2e-4)
        assert second == pytest.approx(bias(client)["grad"], abs=6e-5)
        table = tab.eval_on_selector_all(
            "#extra-accumulate tr",
            "rows => rows.slice(1).map((r) => [...r.cells].map((c) => c.textContent))",
        )
        assert len(table) == 6
        for once, twice, doubled in ([float(c) for c in row] for row in table):
            assert twice == pytest.approx(doubled, abs=2e-6) and doubled == pytest.approx(
                2 * once, abs=2e-6
            )

        # The MSE loss against arange(1, 11): POST /loss's number, about 38.
        printed = run_step(tab, "loss")
        assert re.fullmatch(rf"tensor\(({NUMBER}), grad_fn=<MseLossBackward0>\)", printed)
        body = json.loads(tab.get_attribute("#out-loss", "data-sent"))
        assert body["targets"] == list(range(1, 11)) and body["loss"] == "mse"
        loss = client.post("/loss", json=body).json()
        assert numbers(printed) == pytest.approx([loss["loss"]], abs=6e-5)
        assert 30 < loss["loss"] < 48

        # The grad_fn chain, and the whole graph drawn: one box per node of /loss's graph.
        printed = run_step(tab, "graph")
        assert printed.startswith("MseLossBackward0 -> AddmmBackward0 -> ReluBackward0 -> ")
        assert "ConvolutionBackward0" in printed
        graph = loss["graph"]
        names = tab.eval_on_selector_all(
            "#extra-graph svg g[data-name]", "gs => gs.map((g) => g.dataset.name)"
        )
        assert sorted(names) == sorted(node["name"] for node in graph["nodes"])
        params = tab.eval_on_selector_all(
            "#extra-graph svg text", "ts => ts.map((t) => t.textContent)"
        )
        assert sum("conv1.bias" in text for text in params) == 1

        # conv1.bias.grad: None after zero_grad, then its six numbers after loss.backward().
        printed = run_step(tab, "grad").splitlines()
        assert printed[:3] == [
            "conv1.bias.grad before backward",
            "None",
            "conv1.bias.grad after backward",
        ]
        assert numbers(printed[3]) == pytest.approx(bias(client)["grad"], abs=6e-5)
        assert len(numbers(printed[3])) == 6

        # One SGD step: before - 0.01 x grad = after, number by number, as the API now holds.
        served_step = client.get("/model").json()["step"]
        run_step(tab, "sgd")
        assert client.get("/model").json()["step"] == served_step + 1
        optimizer = client.get("/optimizer").json()
        assert optimizer["name"] == "sgd" and optimizer["lr"] == 0.01
        rows = tab.eval_on_selector_all(
            "#extra-sgd tr",
            "rows => rows.slice(1).map((r) => [...r.cells].map((c) => c.textContent))",
        )
        now = bias(client)["values"]
        assert len(rows) == 6
        for (was, grad, expected, after, ok), value in zip(rows, now, strict=True):
            assert float(after) == pytest.approx(value, abs=1e-7)
            assert float(after) == pytest.approx(float(was) - 0.01 * float(grad), abs=1e-6)
            assert float(expected) == pytest.approx(float(was) - 0.01 * float(grad), abs=1e-7)
            assert ok == "✓"
        assert tab.get_attribute("#extra-sgd p.note", "data-holds") == "true"

        # torch.optim: the whole loop once, the loss goes down; every optimizer the API offers.
        run_step(tab, "optim")
        assert float(tab.get_attribute("#out-optim", "data-after")) < float(
            tab.get_attribute("#out-optim", "data-before")
        )
        offered = [o["name"] for o in client.get("/optimizers").json()["optimizers"]]
        shown = tab.eval_on_selector_all(
            "#extra-optim tr", "rows => rows.slice(1).map((r) => r.cells[0].textContent)"
        )
        assert shown == offered

        # unsqueeze(0): one [32, 32] image and the same as [1, 1, 32, 32] answer alike.
        printed = run_step(tab, "batch")
        assert tab.get_attribute("#out-batch", "data-same") == "true"
        lines = printed.splitlines()
        assert numbers(lines[0]) == numbers(lines[1]) and len(numbers(lines[0])) == 10

        web.ARTIFACTS.mkdir(exist_ok=True)
        tab.screenshot(path=str(web.ARTIFACTS / "tutorial-en-full.png"), full_page=True)
        tab.locator("#step-graph").scroll_into_view_if_needed()
        tab.screenshot(path=str(web.ARTIFACTS / "tutorial-en.png"))

        # In Chinese: the headings and explanations change, the printed results stay.
        tab.select_option("#language", "zh-TW")
        words = web.visible_words(tab, "h1, h2, .tut-step > p, button, th")
        assert set(words) <= web.KEPT_IN_CHINESE, set(words) - web.KEPT_IN_CHINESE
        assert tab.text_content("#out-params") == "10\ntorch.Size([6, 1, 5, 5])"
        tab.locator("#step-grad").scroll_into_view_if_needed()
        tab.screenshot(path=str(web.ARTIFACTS / "tutorial-zh-TW.png"))
        assert record.page_errors == [] and record.console_errors == []
    finally:
        client.close()
        context.close()


def test_tutorial_fits_a_phone(browser: Any, server: LiveServer) -> None:
    context, tab, record = web.open_page(
        browser, server.url + "/static/tutorial.html", viewport=web.PHONE, locale="zh-TW"
    )
    try:
        tab.fill("#token", web.TOKEN)
        for step in ["net", "forward", "loss", "graph", "sgd", "optim"]:
            run_step(tab, step)
        assert web.too_wide(tab) == []
        tab.locator("#step-graph").scroll_into_view_if_needed()
        tab.screenshot(path=str(web.ARTIFACTS / "tutorial-phone-zh-TW.png"))
        assert record.page_errors == [] and record.console_errors == []
    finally:
        context.close()
