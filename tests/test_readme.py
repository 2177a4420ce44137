"""The README's examples run: every ```python block, and the curl block of "Using it from your
stack", against a real server with HTTP and gRPC, each in a fresh process as a reader would."""

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SEED, TEST_DEVICE
from tests.server import LiveServer, free_port, start_test_server

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The addresses the README uses, and where this test's server listens instead.
HTTP_ADDRESS = "127.0.0.1:8000"
GRPC_ADDRESS = "127.0.0.1:8001"


def fenced(text: str, language: str) -> list[str]:
    """The bodies of the fenced blocks tagged `language`, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def section(text: str, heading: str) -> str:
    """The text under `heading` (a markdown heading line), up to the next heading of any level."""
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    following = re.search(r"^#{1,6} ", text[start:], flags=re.MULTILINE)
    return text[start : start + following.start()] if following else text[start:]


PYTHON_BLOCKS = fenced(README, "python")


@dataclass
class Addresses:
    http: str
    grpc: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Addresses]:
    """A seeded server on free ports, HTTP and gRPC."""
    grpc_port = free_port()
    live: LiveServer = start_test_server(
        tmp_path_factory.mktemp("readme"), seed=SEED, device=TEST_DEVICE, grpc_port=grpc_port
    )
    yield Addresses(live.url.removeprefix("http://"), f"127.0.0.1:{grpc_port}")
    live.stop()


def test_the_readme_has_the_examples() -> None:
    assert len(PYTHON_BLOCKS) >= 4
    assert any("tritonclient.grpc" in block for block in PYTHON_BLOCKS)
    assert any("from lenet_client import" in block for block in PYTHON_BLOCKS)


@pytest.mark.server
@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs(server: Addresses, index: int) -> None:
    code = PYTHON_BLOCKS[index]
    assert HTTP_ADDRESS in code or GRPC_ADDRESS in code, code
    code = code.replace(HTTP_ADDRESS, server.http).replace(GRPC_ADDRESS, server.grpc)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, f"{code}\n{result.stderr}"
    assert result.stdout.strip(), code  # each example prints what it shows


@pytest.mark.server
def test_curl_examples_run(server: Addresses) -> None:
    (script,) = fenced(section(README, "### curl"), "sh")
    script = script.replace("localhost:8000", server.http)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace("curl -s", "curl -sf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # Each curl prints one JSON document, without a newline at its end.
    answers, text, decoder = [], result.stdout.strip(), json.JSONDecoder()
    while text:
        answer, end = decoder.raw_decode(text)
        answers.append(answer)
        text = text[end:].lstrip()
    config, stats, index, infer = answers
    assert config["name"] == "lenet" and config["max_batch_size"] == 1024
    assert stats["model_stats"][0]["name"] == "lenet"
    assert index[0]["state"] == "READY"
    assert infer["outputs"][0]["shape"] == [1, 10]
