"""JSON bodies: Content-Encoding on every JSON route, and big bodies decoded off the event loop
(app.json_body), with the same answers either way."""

import gzip
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from app.json_body import (
    IMAGES_FIELD,
    INLINE_NUMBERS,
    DeferredError,
    accepted_body,
    decode_json_body,
    decode_with_orjson,
)
from tests.conftest import image_batch, training_state
from tests.server import LiveServer, start_test_server

ENCODERS: dict[str, Callable[[bytes], bytes]] = {"gzip": gzip.compress, "deflate": zlib.compress}
IMAGE = image_batch(1).tolist()
ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/predict", {"inputs": IMAGE}),
    ("/explain", {"inputs": IMAGE}),
    ("/loss", {"inputs": IMAGE, "targets": [3]}),
    ("/train-step", {"inputs": IMAGE, "targets": [3]}),
    ("/backward", {"inputs": IMAGE, "grad_outputs": [1.0] * 10}),
]


def post(client: TestClient, path: str, body: bytes, encoding: str | None = None) -> Any:
    headers = {"content-type": "application/json"}
    if encoding is not None:
        headers["content-encoding"] = encoding
    return client.post(path, content=body, headers=headers)


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
@pytest.mark.parametrize(("path", "body"), ROUTES, ids=[path for path, _ in ROUTES])
def test_every_json_route_takes_gzip_and_deflate(
    make_client: Callable[..., TestClient],
    tmp_path: Path,
    encoding: str,
    path: str,
    body: dict[str, Any],
) -> None:
    # Two services, each with a folder of its own (versions are reserved per folder).
    plain_client = make_client(checkpoint_dir=tmp_path / "plain")
    encoded_client = make_client(checkpoint_dir=tmp_path / "encoded")
    raw = orjson.dumps(body)
    plain = post(plain_client, path, raw)
    encoded = post(encoded_client, path, ENCODERS[encoding](raw), encoding)
    assert plain.status_code == encoded.status_code == 200, encoded.text
    assert encoded.json() == plain.json()


def test_an_inflated_body_counts_against_the_body_limit(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_body_bytes=64 * 1024)
    before = training_state(client)
    bomb = gzip.compress(b'{"inputs": [' + b"0," * 100_000 + b"0]}")
    assert len(bomb) < 64 * 1024
    answer = post(client, "/train-step", bomb, "gzip")
    assert answer.status_code == 413
    assert "LENET_MAX_BODY_BYTES" in answer.json()["detail"]
    assert training_state(client) == before


@pytest.mark.parametrize(
    ("body", "encoding", "status"),
    [
        (b"not gzip at all", "gzip", 400),
        (gzip.compress(b'{"inputs": 1}')[:-4], "gzip", 400),
        (gzip.compress(b"{}") + b"trailing", "gzip", 400),
        (b"{}", "br", 415),
    ],
)
def test_bad_encodings_are_refused(
    client: TestClient, body: bytes, encoding: str, status: int
) -> None:
    answer = post(client, "/predict", body, encoding)
    assert answer.status_code == status, answer.text
    assert isinstance(answer.json()["detail"], str)


def big_body(images: int, bad: bytes | None = None) -> bytes:
    """A /predict body of `images` 32x32 nested images, decoded off the loop for >= 293 images;
    `bad` replaces the very last pixel."""
    row = b"[" + b",".join([b"0.25"] * 32) + b"]"
    image = b"[" + b",".join([row] * 32) + b"]"
    body = b'{"inputs": [' + b",".join([image] * images) + b"]}"
    if bad is not None:
        body = body[: -len(b"0.25]]]}")] + bad + b"]]]}"
    return body


@pytest.mark.parametrize("bad", [b'"0.25"', b"true", b"1e39", b"[1]"])
def test_a_big_body_gets_the_same_answer_as_a_small_one(client: TestClient, bad: bytes) -> None:
    small, large = big_body(2, bad), big_body(300, bad)
    assert small.count(b",") <= INLINE_NUMBERS < large.count(b",")
    small_answer, large_answer = post(client, "/predict", small), post(client, "/predict", large)
    assert small_answer.status_code == large_answer.status_code == 422
    assert small_answer.json() == large_answer.json()


def test_a_big_body_is_predicted_like_a_small_one(client: TestClient) -> None:
    answer = post(client, "/predict", big_body(300))
    assert answer.status_code == 200, answer.text
    one = post(client, "/predict", big_body(1)).json()
    outputs = np.asarray(answer.json()["outputs"])
    assert outputs.shape == (300, 10)
    np.testing.assert_allclose(outputs, np.repeat(one["outputs"], 300, axis=0), atol=1e-5)


def test_the_decoder_is_one_function_either_way() -> None:
    raw = orjson.dumps({"inputs": IMAGE, "targets": [1]})
    body = decode_json_body(gzip.compress(raw), "gzip", 1 << 20, 4)
    assert isinstance(body["inputs"], np.ndarray) and body["inputs"].dtype == np.float32
    assert body["targets"] == [1]  # small fields stay JSON, so 3 and 3.0 still differ


@pytest.mark.server
@pytest.mark.slow
def test_a_huge_gzip_body_does_not_stall_other_requests(tmp_path: Path) -> None:
    # The body: about 65 KB of gzip that inflates to just under 64 MiB of numbers.
    row = b"[" + b",".join([b"0"] * 32) + b"]"
    image = b"[" + b",".join([row] * 32) + b"]"
    images = (64 * 1024 * 1024 - 100) // (len(image) + 1)
    raw = b'{"inputs": [' + b",".join([image] * images) + b"]}"
    assert 60 * 1024 * 1024 < len(raw) < 64 * 1024 * 1024
    bomb = gzip.compress(raw, compresslevel=9)
    server: LiveServer = start_test_server(tmp_path)
    answer: dict[str, Any] = {}

    def send() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            response = http.post(
                "/predict",
                content=bomb,
                headers={"content-type": "application/json", "content-encoding": "gzip"},
            )
            answer["status"], answer["body"] = response.status_code, response.json()

    try:
        sender = threading.Thread(target=send)
        latencies = []
        with server.client() as http:
            sender.start()
            deadline = time.monotonic() + 120
            while sender.is_alive() and time.monotonic() < deadline:
                started = time.perf_counter()
                assert http.get("/healthz").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.05)
            sender.join(timeout=10)
            assert http.get("/readyz").status_code == 200
    finally:
        server.stop()
    assert answer["status"] == 422 and "LENET_MAX_BATCH_SIZE" in answer["body"]["detail"]
    assert len(latencies) >= 5, "the body was decoded too fast to watch"
    # Before, every route froze for 4-7 s; the contract's half second, with room for a busy CI.
    assert max(latencies) < 1.5, f"healthz took up to {max(latencies):.2f} s"


# --- the simdjson path: taken for the common bodies, equal to the orjson path, strict -----------


def decoded(call: Callable[[], dict[str, Any]]) -> Any:
    """What a decoder made of a body, comparable bit for bit: arrays as bytes, shape and dtype,
    deferred and raised errors as their type and message."""
    try:
        body = call()
    except Exception as error:  # noqa: BLE001 - the error is the answer being compared
        return ("raised", type(error).__name__, str(error))
    shown: dict[str, Any] = {}
    for key, value in body.items():
        if isinstance(value, np.ndarray):
            shown[key] = (value.tobytes(), value.shape, value.dtype.str)
        elif isinstance(value, DeferredError):
            shown[key] = ("deferred", str(value.error))
        else:
            shown[key] = ("json", repr(value))
    return list(shown.items())


def both_paths(body: bytes, max_batch_size: int = 8) -> tuple[Any, Any]:
    return (
        decoded(lambda: decode_json_body(body, None, 1 << 26, max_batch_size)),
        decoded(lambda: decode_with_orjson(body, max_batch_size)),
    )


COMMON_BODIES = [
    orjson.dumps({"inputs": IMAGE}),
    orjson.dumps({"inputs": image_batch(3).tolist(), "targets": [1, 2, 3]}),
    orjson.dumps({"inputs": image_batch(2).tolist(), "loss": "mse", "target": [[0.5] * 10] * 2}),
    orjson.dumps({"inputs": [[1, -0, -0.0, 2.5e-320, 1e38, 9007199254740993]], "version": 4}),
    b' {"inputs" : [ [1 , 2] , [3,4] ] , "optimizer": {"name": "sgd", "lr": 0.1}}\n',
    b'{"tensor": {"shape": [1, 1], "dtype": "float32", "data": "AACAPw=="}, "x": [[1], 2]}',
    b'{"tensor": {"data": "a", "data": "b", "shape": [1, {"y": 1, "y": 2}]}}',
]


@pytest.mark.parametrize("body", COMMON_BODIES, ids=range(len(COMMON_BODIES)))
def test_common_bodies_take_the_simdjson_path_and_equal_orjson(body: bytes) -> None:
    accepted = accepted_body(body, 8)
    assert accepted is not None
    assert IMAGES_FIELD not in accepted or isinstance(accepted[IMAGES_FIELD], np.ndarray)
    fast, reference = both_paths(body)
    assert fast == reference


UNPROVEN_BODIES = {
    "a number as a one-element array": b'{"inputs": [[1, [2]], [3, 4]]}',
    "rows of other lengths, as many numbers": b'{"inputs": [[1, 2], [3, 4, 5], [6]]}',
    "arrays and numbers mixed": b'{"inputs": [[1, 2], [[3], 4]]}',
    "an empty row": b'{"inputs": [[1], []]}',
    "empty": b'{"inputs": []}',
    "five levels": b'{"inputs": [[[[[1]]]]]}',
    "a boolean": b'{"inputs": [[1, true]]}',
    "a string": b'{"inputs": [[1, "2"]]}',
    "null": b'{"inputs": [[1, null]]}',
    "too large for float32": b'{"inputs": [[1e39]]}',
    "too large for a double": b'{"inputs": [[1e400]]}',
    "an integer past 64 bits": b'{"inputs": [[18446744073709551616]]}',
    "over the batch limit": orjson.dumps({"inputs": image_batch(9).tolist()}),
    "inputs twice": b'{"inputs": [[1]], "inputs": [[2]]}',
    "a bracket spelled as an escape": b'{"inputs": [[1, [2]]], "note": "\\u005d\\u005b"}',
    "a byte order mark": b'\xef\xbb\xbf{"inputs": [[1]]}',
    "not an object": b"[[1, 2]]",
    "inputs not an array": b'{"inputs": 5}',
    "trailing garbage": b'{"inputs": [[1]]} x',
    "a key twice, no inputs": b'{"tensor": 1, "tensor": 2}',
    "an escape, no inputs": b'{"tensor": {"data": "\\u0041"}}',
    "NaN": b'{"inputs": [[NaN]]}',
}


@pytest.mark.parametrize("body", UNPROVEN_BODIES.values(), ids=UNPROVEN_BODIES.keys())
def test_what_simdjson_cannot_prove_is_left_to_orjson(body: bytes) -> None:
    assert accepted_body(body, 8) is None
    fast, reference = both_paths(body)
    assert fast == reference


def test_mangled_bodies_get_the_orjson_answer() -> None:
    """Bounded fuzzing: 2,000 random edits of small bodies, each decoded both ways; the answers
    (values to the bit, or the error's type and message) must be the same."""
    rng = np.random.default_rng(7)
    seeds = [
        b'{"inputs": [[1, 2.5], [-3e2, 4]], "targets": [1, 0]}',
        b'{"inputs": [[[0.25, 1], [2, 3]], [[4, 5], [6, 7]]], "loss": "mse"}',
    ]
    alphabet = b'[]{},:."0123456789eE-+ tn\\u'
    fast_ones = 0
    for trial in range(2000):
        body = bytearray(seeds[trial % len(seeds)])
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, len(body)))
            edit = int(rng.integers(0, 3))
            char = alphabet[int(rng.integers(0, len(alphabet)))]
            if edit == 0:
                body.insert(at, char)
            elif edit == 1:
                del body[at]
            else:
                body[at] = char
        fast, reference = both_paths(bytes(body))
        assert fast == reference, bytes(body)
        fast_ones += accepted_body(bytes(body), 8) is not None
    assert fast_ones > 100  # the fast path was really exercised by mangled bodies that parse


RESIDENT_SCRIPT = """
import sys
from pathlib import Path

from app.json_body import decode_json_body


def resident_mib():
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


body = b'{"inputs": [' + b",".join([b"0"] * 4_000_000) + b"]}"
before = resident_mib()
decoded = decode_json_body(body, None, 1 << 26, 1 << 30)
assert decoded["inputs"].shape == (4_000_000,)
del decoded
print(resident_mib() - before)
"""


def test_a_big_body_leaves_no_parser_buffers_behind() -> None:
    """simdjson keeps buffers as large as the largest document a parser has seen (over 100 MB
    for these 8 MB of zeros): a big body's parser is its own, freed with it."""
    result = subprocess.run(
        [sys.executable, "-c", RESIDENT_SCRIPT],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 40, result.stdout  # MiB kept after the answer is gone
