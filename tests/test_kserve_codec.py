"""app.kserve on its own: bytes in, bytes out. Requests in JSON (flat or nested `data`) and
with the binary tensor extension, the header-length rules, answers in both forms, and content
decoding. Every rejection of a request is a BadRequest (400, as the protocol wants) that names
what was wrong; only the body's size (413) and encoding (415) answer otherwise."""

import gzip
import re
import struct
import zlib
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from app.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.kserve import (
    HEADER_LENGTH,
    InferRequest,
    bad_input_is_400,
    decode_content,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
    server_metadata,
)
from app.tensors import Limits
from tests.conftest import image_batch

LIMITS = Limits(max_batch_size=4, max_image_side=256)


def request_json(images: np.ndarray, nested: bool = False, **tensor: Any) -> dict[str, Any]:
    """An inference request for `images` (N, 1, 32, 32) with JSON `data`."""
    data = images.tolist() if nested else images.ravel().tolist()
    entry = {"name": "input", "shape": list(images.shape), "datatype": "FP32", "data": data}
    entry.update(tensor)
    return {"inputs": [entry]}


def binary_body(images: np.ndarray, **request: Any) -> tuple[bytes, str]:
    """A request with the binary tensor extension: body and Inference-Header-Content-Length."""
    raw = images.astype("<f4").tobytes()
    entry = {
        "name": "input",
        "shape": list(images.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(raw)},
    }
    header = orjson.dumps({"inputs": [entry], **request})
    return header + raw, str(len(header))


def parse(request: Any, header_length: str | None = None) -> InferRequest:
    body = request if isinstance(request, bytes) else orjson.dumps(request)
    return parse_infer_request(body, header_length, LIMITS)


def bad_request(body: Any, words: str, header_length: str | None = None) -> None:
    """Parsing `body` is a BadRequest (not a 422) whose message holds `words`."""
    with pytest.raises(BadRequest, match=re.escape(words)) as caught:
        parse(body, header_length)
    assert type(caught.value) is BadRequest and caught.value.status_code == 400


# ----------------------------------------------------------------- requests


@pytest.mark.parametrize("nested", [False, True])
def test_json_data_flat_or_nested(nested: bool) -> None:
    images = image_batch(3, seed=5)
    decoded = parse({**request_json(images, nested), "id": "r-1"})
    assert decoded.images.dtype == torch.float32
    np.testing.assert_array_equal(decoded.images.numpy(), images)
    assert decoded.request_id == "r-1" and decoded.binary_output is False


def test_binary_input_equals_json_data() -> None:
    images = image_batch(2, seed=6)
    body, length = binary_body(images)
    decoded = parse(body, length)
    np.testing.assert_array_equal(decoded.images.numpy(), images)
    assert decoded.request_id is None
    assert torch.equal(decoded.images, parse(request_json(images)).images)


def test_binary_output_is_chosen_by_the_request_or_the_output() -> None:
    images = image_batch(1)
    base = request_json(images)
    assert parse({**base, "parameters": {"binary_data_output": True}}).binary_output
    outputs = [{"name": "logits", "parameters": {"binary_data": True}}]
    assert parse({**base, "outputs": outputs}).binary_output
    # An output's own choice wins over the request's default.
    off = [{"name": "logits", "parameters": {"binary_data": False}}]
    both = {**base, "parameters": {"binary_data_output": True}, "outputs": off}
    assert not parse(both).binary_output
    assert not parse({**base, "outputs": [{"name": "logits"}]}).binary_output


@pytest.mark.parametrize(
    ("length", "words"),
    [
        ("-1", "must be a non-negative integer, got '-1'"),
        ("abc", "must be a non-negative integer"),
        ("1.5", "must be a non-negative integer"),
        ("", "must be a non-negative integer"),
        ("\u0661\u0662", "must be a non-negative integer"),  # Arabic-Indic digits: not ASCII
        ("999999", "is 999999 but the body has only"),
    ],
)
def test_the_header_length_must_be_a_count_within_the_body(length: str, words: str) -> None:
    body, _ = binary_body(image_batch(1))
    bad_request(body, f"{HEADER_LENGTH} {words}" if "must" in words else words, length)


def test_the_header_length_may_carry_spaces() -> None:
    images = image_batch(1)
    body, length = binary_body(images)
    np.testing.assert_array_equal(parse(body, f" {length} ").images.numpy(), images)


def test_binary_framing_errors() -> None:
    images = image_batch(1)
    body, length = binary_body(images)
    bad_request(body[:-4], "binary_data_size is 4096 but only 4092 bytes follow the JSON", length)
    bad_request(body + b"\0" * 4, "4 bytes after the JSON are not claimed", length)
    # Without the header, the whole body is JSON: the raw bytes make it invalid.
    bad_request(body, "not valid JSON", None)
    header = orjson.loads(body[: int(length)])
    header["inputs"][0]["parameters"]["binary_data_size"] = 12
    text = orjson.dumps(header)
    bad_request(text + body[int(length) :], "binary_data_size must be 4096", str(len(text)))
    header["inputs"][0]["parameters"]["binary_data_size"] = "4096"
    text = orjson.dumps(header)
    bad_request(text + body[int(length) :], "got '4096'", str(len(text)))
    nan = struct.pack("<f", float("nan")) + images.astype("<f4").tobytes()[4:]
    bad_request(body[: int(length)] + nan, "binary data must hold finite float32", length)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"datatype": "INT32"}, "datatype must be FP32, got 'INT32'"),
        ({"datatype": "FP64"}, "datatype must be FP32"),
        ({"name": "image"}, "unknown input 'image'; model 'lenet' has one input 'input'"),
        ({"shape": [1, 32, 32]}, "shape must be [N, 1, 32, 32] with N >= 1, got [1, 32, 32]"),
        ({"shape": [1, 1, 28, 28]}, "[N, 1, 32, 32]"),
        ({"shape": [0, 1, 32, 32]}, "N >= 1"),
        ({"shape": [1, 1, 32, "32"]}, "shape must be an array of integers"),
        ({"shape": "1x1x32x32"}, "shape must be an array of integers"),
        ({"shape": [5, 1, 32, 32]}, "batch of 5 images is over the limit of 4"),
        ({"data": [0.5] * 10}, "needs 1024 values, flat or nested"),
        ({"data": np.zeros((1, 1, 16, 64)).tolist()}, "has shape [1, 1, 16, 64]"),
        ({"data": ["0.5"] * 1024}, "must hold only numbers, found a string"),
        ({"data": [True] * 1024}, "found a boolean"),
        ({"data": [1e39] * 1024}, "must hold finite float32 values"),
        ({"data": None}, "data must be an array, got null"),
        ({"data": []}, "data is empty"),
        ({"parameters": {"binary_data_size": 4096}}, "both 'data' and a binary_data_size"),
        ({"parameters": []}, "parameters must be a JSON object"),
        ({"extra": 1}, "unknown field(s) in an input: ['extra']"),
    ],
)
def test_bad_inputs_are_400(change: dict[str, Any], words: str) -> None:
    bad_request(request_json(image_batch(1), **change), words)


def test_the_batch_limit_on_v2_is_400_naming_it() -> None:
    bad_request(request_json(image_batch(5)), "(LENET_MAX_BATCH_SIZE)")


def test_an_input_without_data_needs_the_binary_extension() -> None:
    request = request_json(image_batch(1))
    del request["inputs"][0]["data"]
    bad_request(request, "needs 'data' or parameters.binary_data_size")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "the inference request is not valid JSON"),
        (b"NaN", "not valid JSON"),
        (b'{"inputs": [{"data": [NaN]}]}', "not valid JSON"),
        (b"[]", "the inference request must be a JSON object"),
        (b"{}", "inputs must be an array of exactly one tensor, 'input'"),
        (b'{"inputs": []}', "exactly one tensor"),
        (b'{"inputs": [{}, {}]}', "exactly one tensor"),
        (b'{"inputs": [3]}', "an input must be a JSON object"),
        (b'{"input": []}', "unknown field(s) in the inference request: ['input']"),
        (b'{"inputs": [{}], "id": 3}', "id must be a string"),
        (b'{"inputs": [{}], "parameters": 3}', "the request's parameters must be a JSON object"),
    ],
)
def test_malformed_requests_are_400(body: bytes, words: str) -> None:
    bad_request(body, words)


@pytest.mark.parametrize(
    ("outputs", "words"),
    [
        ({"name": "logits"}, "outputs must be an array"),
        ([{"name": "probabilities"}], "unknown output 'probabilities'; model 'lenet' has one"),
        ([3], "each output must be a JSON object"),
        ([{"name": "logits", "extra": 1}], "unknown field(s) in an output: ['extra']"),
        ([{"name": "logits", "parameters": {"classification": 3}}], "classification extension"),
        ([{"name": "logits", "parameters": {"binary_data": "yes"}}], "must be true or false"),
        ([{"name": "logits", "parameters": []}], "output parameters must be a JSON object"),
    ],
)
def test_bad_outputs_are_400(outputs: Any, words: str) -> None:
    bad_request({**request_json(image_batch(1)), "outputs": outputs}, words)


def test_a_bad_binary_data_output_is_400() -> None:
    request = {**request_json(image_batch(1)), "parameters": {"binary_data_output": 1}}
    bad_request(request, "the request.parameters.binary_data_output must be true or false")


def test_bad_input_is_400_turns_only_invalid_input_into_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="overflow") as caught:
        with bad_input_is_400():
            raise InvalidInput("outputs overflow")
    assert caught.value.status_code == 400 and isinstance(caught.value.__cause__, InvalidInput)
    with pytest.raises(PayloadTooLarge), bad_input_is_400():
        raise PayloadTooLarge("too big")


# ----------------------------------------------------------------- answers


def logits_of(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 10)).astype(np.float32)


def test_a_json_answer() -> None:
    logits = logits_of(3)
    request = InferRequest(torch.zeros(3, 1, 32, 32), "abc", binary_output=False)
    answer = encode_infer_response(request, logits, weights_version=12, step=7)
    assert answer.media_type == "application/json" and answer.header_length is None
    body = orjson.loads(answer.body)
    data = np.asarray(body["outputs"][0].pop("data"), dtype=np.float32)
    assert body == {
        "model_name": "lenet",
        "model_version": "12",
        "id": "abc",
        "parameters": {"step": 7},
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [3, 10]}],
    }
    np.testing.assert_array_equal(data.reshape(3, 10), logits)  # float32 round-trips exactly


def test_a_binary_answer() -> None:
    logits = logits_of(2)
    request = InferRequest(torch.zeros(2, 1, 32, 32), None, binary_output=True)
    answer = encode_infer_response(request, logits, weights_version=3, step=3)
    assert answer.media_type == "application/octet-stream"
    assert answer.header_length is not None
    header = orjson.loads(answer.body[: answer.header_length])
    assert "id" not in header and header["model_version"] == "3"
    output = header["outputs"][0]
    assert output == {
        "name": "logits",
        "datatype": "FP32",
        "shape": [2, 10],
        "parameters": {"binary_data_size": 2 * 10 * 4},
    }
    raw = answer.body[answer.header_length :]
    assert raw == logits.astype("<f4").tobytes()


# ----------------------------------------------------------------- content encodings


def test_decode_content_identity_gzip_and_deflate() -> None:
    body = orjson.dumps(request_json(image_batch(1)))
    assert decode_content(body, None, len(body)) is body
    assert decode_content(body, "identity", len(body)) is body
    assert decode_content(gzip.compress(body), "gzip", len(body)) == body
    assert decode_content(gzip.compress(body), " GZIP ", len(body)) == body
    assert decode_content(zlib.compress(body), "deflate", len(body)) == body  # HTTP's zlib


def test_decode_content_limits_the_inflated_size() -> None:
    body = b"0" * 4096
    assert decode_content(gzip.compress(body), "gzip", 4096) == body  # at the limit
    with pytest.raises(PayloadTooLarge, match=re.escape("over the limit of 4095 bytes")) as big:
        decode_content(gzip.compress(body), "gzip", 4095)
    assert big.value.status_code == 413 and "LENET_MAX_BODY_BYTES" in big.value.detail
    bomb = gzip.compress(b"0" * (16 * 1024 * 1024))  # 16 MiB of zeros in ~16 KiB
    with pytest.raises(PayloadTooLarge):
        decode_content(bomb, "gzip", 1024 * 1024)


def test_decode_content_refusals() -> None:
    with pytest.raises(UnsupportedMediaType, match="unsupported Content-Encoding 'br'") as br:
        decode_content(b"{}", "br", 1024)
    assert br.value.status_code == 415
    with pytest.raises(BadRequest, match="not valid gzip data"):
        decode_content(b"not gzip", "gzip", 1024)
    with pytest.raises(BadRequest, match="not valid deflate data"):
        decode_content(gzip.compress(b"{}"), "deflate", 1024)  # gzip framing is not zlib's
    whole = gzip.compress(b'{"inputs": []}')
    with pytest.raises(BadRequest, match="not one complete gzip stream"):
        decode_content(whole[:-6], "gzip", 1024)
    with pytest.raises(BadRequest, match="not one complete gzip stream"):
        decode_content(whole + b"trailing", "gzip", 1024)


# ----------------------------------------------------------------- metadata


def test_metadata() -> None:
    assert server_metadata("lenet-serve", "0.1.0") == {
        "name": "lenet-serve",
        "version": "0.1.0",
        "extensions": [
            "binary_tensor_data",
            "model_configuration",
            "statistics",
            "model_repository",
        ],
    }
    assert model_metadata([41, 40]) == {
        "name": "lenet",
        "versions": ["41", "40"],
        "platform": "pytorch",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 32, 32]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
