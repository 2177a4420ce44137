"""app.tensors on its own: the request tensor codec, its limits, resizing, weight checks and
byte-stable safetensors. Each rejection is checked for its class (its HTTP status) and for the
words that say what was wrong."""

import base64
import re
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load as load_safetensors

from app.errors import BadRequest, InvalidInput, UnsupportedMediaType
from app.json_body import nested_to_array, parse_json_object
from app.settings import Settings
from app.tensors import (
    Limits,
    check_json_content_type,
    images_from_array,
    images_from_base64,
    images_from_body,
    images_from_nested,
    needs_resize,
    optional_class,
    optional_flag,
    optional_int,
    optional_lr,
    reject_unknown_fields,
    resize_images,
    resolve_loss,
    save_weights,
    single_image,
    targets_from_json,
    validate_weights,
    vectors_from_json,
)
from models.lenet import PARAMETER_SHAPES
from tests.conftest import image_batch, local_net

LIMITS = Limits(max_batch_size=4, max_image_side=40)


def tensor_form(array: np.ndarray, **overrides: Any) -> dict[str, Any]:
    """The base64 `tensor` form of `array`, with fields overridden."""
    data = base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode()
    return {"shape": list(array.shape), "dtype": "float32", "data": data, **overrides}


def refused(call: Any, words: str, error: type[Exception] = InvalidInput) -> str:
    """Run `call`, which must raise exactly `error`, whose message holds `words`."""
    with pytest.raises(error, match=re.escape(words)) as caught:
        call()
    assert type(caught.value) is error, type(caught.value)
    return str(caught.value)


# ----------------------------------------------------------------- nested_to_array


def test_nested_to_array_keeps_shape_and_values_in_float64() -> None:
    array = nested_to_array([[1, 2.5], [3, -4]], "inputs", max_rank=4)
    assert array.dtype == np.float64 and array.shape == (2, 2)
    np.testing.assert_array_equal(array, [[1.0, 2.5], [3.0, -4.0]])
    assert nested_to_array([7], "x", max_rank=1).shape == (1,)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("[[0.0]]", "inputs must be an array, got a string"),
        (3.0, "inputs must be an array, got a number"),
        (None, "inputs must be an array, got null"),
        ({"a": 1}, "inputs must be an array, got an object"),
        ([], "inputs is empty along dimension 0"),
        ([[]], "inputs is empty along dimension 1"),
        ([[1.0, 2.0], [3.0]], "inputs is ragged: arrays at depth 1 differ in length"),
        ([[1.0], 2.0], "inputs is ragged: depth 1 mixes arrays and numbers"),
        ([[[[[0.0]]]]], "inputs has more than 4 dimensions"),
        ([["1.0", 2.0]], "inputs must hold only numbers, found a string"),
        ([[True, 2.0]], "inputs must hold only numbers, found a boolean"),
        ([[None, 2.0]], "inputs must hold only numbers, found null"),
        ([[{}, "x"]], "inputs must hold only numbers, found a string, an object"),
        ([[10**400]], "inputs holds a number too large for float32"),
    ],
)
def test_nested_to_array_refuses_what_is_not_a_rectangle_of_numbers(value: Any, words: str) -> None:
    refused(lambda: nested_to_array(value, "inputs", max_rank=4), words)


# ----------------------------------------------------------------- images


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((5, 6), (1, 1, 5, 6)), ((3, 5, 6), (3, 1, 5, 6)), ((2, 1, 5, 6), (2, 1, 5, 6))],
)
def test_images_of_rank_2_3_and_4_become_a_batch(
    shape: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    array = np.random.default_rng(0).standard_normal(shape)
    for images in (
        images_from_array(array, "inputs", LIMITS),
        images_from_nested(array.tolist(), LIMITS),
        images_from_base64(tensor_form(array), LIMITS),
    ):
        assert images.dtype == torch.float32 and tuple(images.shape) == expected
        np.testing.assert_array_equal(images.numpy().reshape(shape), array.astype(np.float32))


def test_integers_are_pixels_and_the_float32_edge_is_finite() -> None:
    images = images_from_nested([[0, 1], [3.4e38, -3.4e38]], LIMITS)
    assert images.tolist() == [[[[0.0, 1.0], [np.float32(3.4e38), np.float32(-3.4e38)]]]]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ([1.0, 2.0], "inputs must have rank 2 [H, W], 3 [N, H, W] or 4 [N, 1, H, W]; got rank 1"),
        (np.zeros((1, 3, 8, 8)).tolist(), "a rank-4 batch must be [N, 1, H, W] (one channel)"),
        ([[1e39, 0.0]], "inputs must hold finite float32 values"),
        ([[-1e39, 0.0]], "inputs must hold finite float32 values"),
        (np.zeros((5, 2, 2)).tolist(), "batch of 5 images is over the limit of 4"),
        (np.zeros((5, 1, 2, 2)).tolist(), "(LENET_MAX_BATCH_SIZE)"),
        (np.zeros((41, 2)).tolist(), "image of 41x2 is over the side limit of 40"),
        (np.zeros((1, 2, 41)).tolist(), "(LENET_MAX_IMAGE_SIDE)"),
    ],
)
def test_images_from_nested_refuses_bad_batches(value: Any, words: str) -> None:
    refused(lambda: images_from_nested(value, LIMITS), words)


def test_the_batch_limit_is_checked_before_the_numbers() -> None:
    # An oversized batch of garbage is refused for its size: nothing big is built first.
    value = [[["x"]]] * 5
    refused(lambda: images_from_nested(value, LIMITS), "LENET_MAX_BATCH_SIZE")


def test_images_from_array_refuses_an_empty_batch() -> None:
    refused(lambda: images_from_array(np.zeros((0, 1, 4, 4)), "tensor", LIMITS), "empty")


GOOD = np.zeros((1, 32, 32), dtype=np.float32)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("AAAA", "tensor must be an object, got a string"),
        ([1, 2], "tensor must be an object, got an array"),
        ({**tensor_form(GOOD), "extra": 1}, "unknown field(s) in tensor: ['extra']"),
        (tensor_form(GOOD, shape=[]), "tensor.shape must be a non-empty array"),
        (tensor_form(GOOD, shape=[-32, -32]), "non-negative integers"),
        (tensor_form(GOOD, shape=["32", "32"]), "non-negative integers"),
        (tensor_form(GOOD, shape=[32.0, 32.0]), "non-negative integers"),
        (tensor_form(GOOD, shape=[True, 32, 32]), "non-negative integers"),
        (tensor_form(GOOD, shape="32"), "non-negative integers"),
        (tensor_form(GOOD, dtype="float64"), "tensor.dtype must be \"float32\", got 'float64'"),
        (tensor_form(GOOD, data=123), "tensor.data must be a base64 string, got a number"),
        ({"shape": [1, 32, 32], "dtype": "float32"}, "got null"),
        (tensor_form(GOOD, shape=[1, 1, 1, 32, 32]), "got rank 5"),
        (tensor_form(GOOD, shape=[2, 32, 32]), "expected 8192 bytes of float32"),
        (tensor_form(GOOD, data="!!!!" * 1366), "tensor.data is not valid base64"),
        (tensor_form(GOOD, shape=[0, 32, 32], data=""), "tensor is empty"),
        (tensor_form(GOOD, shape=[2**40, 1, 1]), "does not match shape"),
        (tensor_form(np.zeros((1, 3, 8, 8))), "one channel"),
        (tensor_form(np.full((2, 2), np.nan)), "finite float32"),
        (tensor_form(np.full((2, 2), np.inf)), "finite float32"),
    ],
)
def test_images_from_base64_refuses_bad_tensors(value: Any, words: str) -> None:
    refused(lambda: images_from_base64(value, LIMITS), words)


def test_base64_dtype_defaults_to_float32() -> None:
    form = tensor_form(image_batch(1, side=8)[0])
    del form["dtype"]
    images = images_from_base64(form, LIMITS)
    np.testing.assert_array_equal(images.numpy()[:, 0], image_batch(1, side=8)[0])


def test_a_body_gives_exactly_one_image_form() -> None:
    both = {"inputs": [[0.0]], "tensor": tensor_form(np.zeros((1, 1)))}
    refused(lambda: images_from_body(both, LIMITS), "not both")
    refused(lambda: images_from_body({}, LIMITS), "found neither")
    assert images_from_body({"inputs": [[0.0]]}, LIMITS).shape == (1, 1, 1, 1)
    assert images_from_body({"tensor": tensor_form(np.zeros((2, 3)))}, LIMITS).shape == (
        1,
        1,
        2,
        3,
    )


def test_single_image() -> None:
    one = torch.zeros(1, 1, 32, 32)
    assert single_image(one, "inputs") is one
    refused(lambda: single_image(torch.zeros(2, 1, 32, 32), "inputs"), "exactly one image, got 2")


# ----------------------------------------------------------------- limits


def test_limits_come_from_settings_and_name_the_setting() -> None:
    limits = Limits.from_settings(Settings(max_batch_size=3, max_image_side=17))
    assert limits == Limits(3, 17)
    limits.check_batch(3, "inputs")  # at the limit: accepted
    message = refused(lambda: limits.check_batch(4, "inputs"), "LENET_MAX_BATCH_SIZE")
    assert message == ("inputs: batch of 4 images is over the limit of 3 (LENET_MAX_BATCH_SIZE)")


# ----------------------------------------------------------------- targets and vectors


def test_class_indices_are_json_integers_0_to_9() -> None:
    targets = targets_from_json([3, 0, 9], batch_size=3)
    assert targets.kind == "indices" and targets.values.dtype == torch.int64
    assert targets.values.tolist() == [3, 0, 9]
    # N = 10: ten integers are ten indices, not one target vector.
    assert targets_from_json(list(range(10)), batch_size=10).kind == "indices"


def test_target_vectors_are_n_by_10_floats() -> None:
    rows = [[0.1] * 10, [0.0] * 9 + [1.0]]
    targets = targets_from_json(rows, batch_size=2)
    assert targets.kind == "vectors" and targets.values.dtype == torch.float32
    np.testing.assert_array_equal(targets.values.numpy(), np.asarray(rows, dtype=np.float32))
    # The tutorial's arange(1, 11): a length-10 array when N is 1, integers allowed.
    tutorial = targets_from_json(list(range(1, 11)), batch_size=1)
    assert tutorial.kind == "vectors" and tuple(tutorial.values.shape) == (1, 10)
    assert tutorial.values[0].tolist() == [float(v) for v in range(1, 11)]


@pytest.mark.parametrize(
    ("targets", "n", "words"),
    [
        (None, 2, "targets are required"),
        ([3, 1.0], 2, "class indices must be JSON integers 0-9 (3, not 3.0)"),
        ([3.0], 1, "class indices must be JSON integers"),
        ([3.5, 1], 2, "class indices must be JSON integers"),
        ([-1, 0], 2, "class indices must be in 0-9, got -1"),
        ([10, 0], 2, "class indices must be in 0-9, got 10"),
        (["3", "1"], 2, "targets must hold only numbers, found a string"),
        ([True, False], 2, "targets must hold only numbers, found a boolean"),
        ([1, 2, 3], 2, "targets must be 2 class indices or a [2, 10] array"),
        ([[1, 2]], 2, "got shape [1, 2]"),
        ([[[0.1] * 10] * 2], 2, "targets has more than 2 dimensions"),
        ([0.1] * 9, 1, "got shape [9]"),
        ([[0.1] * 10] * 2, 3, "got shape [2, 10]"),
        ([], 2, "targets is empty"),
        (3, 2, "targets must be an array"),
        ([[1e39] * 10], 1, "targets must hold finite float32 values"),
    ],
)
def test_bad_targets_are_refused(targets: Any, n: int, words: str) -> None:
    refused(lambda: targets_from_json(targets, n), words)


def test_vectors_from_json() -> None:
    rows = np.random.default_rng(2).standard_normal((3, 10))
    vectors = vectors_from_json(rows.tolist(), 3, "grad_outputs")
    np.testing.assert_array_equal(vectors.numpy(), rows.astype(np.float32))
    assert tuple(vectors_from_json([1.0] * 10, 1, "grad_outputs").shape) == (1, 10)
    refused(lambda: vectors_from_json(None, 1, "grad_outputs"), "grad_outputs is required")
    refused(
        lambda: vectors_from_json([1.0] * 10, 2, "grad_outputs"),
        "grad_outputs must be a [2, 10] array (one row of 10 per image); got shape [10]",
    )
    refused(lambda: vectors_from_json([[1e39] * 10], 1, "grad_outputs"), "finite float32")
    refused(lambda: vectors_from_json([["1"] * 10], 1, "grad_outputs"), "only numbers")


def test_resolve_loss() -> None:
    indices = targets_from_json([1, 2], 2)
    vectors = targets_from_json([[0.1] * 10] * 2, 2)
    assert resolve_loss(None, indices) == "cross_entropy"
    assert resolve_loss(None, vectors) == "mse"
    assert resolve_loss("cross_entropy", vectors) == "cross_entropy"
    assert resolve_loss("mse", vectors) == "mse"
    refused(lambda: resolve_loss("mse", indices), "the mse loss needs target vectors")
    for name in ("hinge", "MSE", "", 1, ["mse"]):
        refused(lambda name=name: resolve_loss(name, vectors), f"unknown loss {name!r}")


# ----------------------------------------------------------------- optional fields


def test_optional_helpers_take_absent_values_and_refuse_coercion() -> None:
    assert optional_class(None, "target") is None and optional_class(9, "target") == 9
    for bad in (10, -1, 3.0, True, "3"):
        refused(lambda bad=bad: optional_class(bad, "target"), "target must be a class index")
    assert optional_int(None, "version") is None and optional_int(-5, "version") == -5
    refused(lambda: optional_int(1.0, "version"), "version must be an integer, got a number")
    refused(lambda: optional_int("1", "version"), "got a string")
    assert optional_lr(None) is None
    assert optional_lr(1) == 1.0 and type(optional_lr(1)) is float
    for bad, kind in (("0.1", "a string"), (True, "a boolean"), ([0.1], "an array")):
        refused(lambda bad=bad: optional_lr(bad), f"lr must be a number, got {kind}")
    assert optional_flag({}, "graph") is False
    assert optional_flag({}, "zero_grad", default=True) is True
    assert optional_flag({"graph": True}, "graph") is True
    for bad in (1, "true", None, [True]):
        refused(lambda bad=bad: optional_flag({"graph": bad}, "graph"), "graph must be true or")


# ----------------------------------------------------------------- the body itself


def test_json_content_type() -> None:
    check_json_content_type("application/json")
    check_json_content_type("Application/JSON; charset=utf-8")
    for bad in (None, "", "text/plain", "application/jsonx", "json"):
        refused(lambda bad=bad: check_json_content_type(bad), "must be application/json",
                UnsupportedMediaType)  # fmt: skip


def test_parse_json_object() -> None:
    assert parse_json_object(b'{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    for text in (b"", b"{", b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1}x', b"\xff"):
        refused(lambda text=text: parse_json_object(text), "not valid JSON", BadRequest)
    refused(lambda: parse_json_object(b"[1]"), "must be a JSON object, got an array")
    refused(lambda: parse_json_object(b"null"), "got null")


def test_reject_unknown_fields() -> None:
    reject_unknown_fields({"a": 1}, frozenset({"a", "b"}), "the body")
    refused(
        lambda: reject_unknown_fields({"c": 1, "a": 2, "d": 3}, frozenset({"a"}), "the body"),
        "unknown field(s) in the body: ['c', 'd']; allowed: ['a']",
    )


# ----------------------------------------------------------------- resizing


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (1, 1, 32, 40), (3, 1, 7, 100), (1, 1, 64, 64)])
def test_resize_is_torchs_bilinear_interpolate(shape: tuple[int, ...]) -> None:
    images = torch.from_numpy(np.random.default_rng(3).standard_normal(shape).astype(np.float32))
    assert needs_resize(images)
    resized = resize_images(images)
    expected = F.interpolate(
        images, size=(32, 32), mode="bilinear", align_corners=False, antialias=False
    )
    assert tuple(resized.shape) == (shape[0], 1, 32, 32)
    assert torch.equal(resized, expected)
    assert not needs_resize(resized)


def test_32_by_32_needs_no_resize() -> None:
    assert not needs_resize(torch.zeros(5, 1, 32, 32))


# ----------------------------------------------------------------- weights


def lenet_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in local_net(seed).named_parameters()}


def test_lenets_weights_are_valid() -> None:
    validate_weights(lenet_weights())


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"conv1.weight": None}, "missing ['conv1.weight'], unexpected []"),
        ({"extra.weight": torch.zeros(3)}, "missing [], unexpected ['extra.weight']"),
        ({"fc3.bias": torch.zeros(10, dtype=torch.float64)}, "fc3.bias: dtype must be float32"),
        ({"fc3.bias": torch.zeros(10, dtype=torch.float16)}, "got float16"),
        ({"fc3.bias": torch.zeros(10, dtype=torch.int32)}, "got int32"),
        ({"fc3.bias": torch.zeros(11)}, "fc3.bias: shape must be [10], got [11]"),
        ({"fc3.bias": torch.zeros(1, 10)}, "got [1, 10]"),
        ({"fc1.weight": torch.full((120, 400), float("nan"))}, "fc1.weight: values must be"),
        ({"fc3.bias": torch.full((10,), float("inf"))}, "fc3.bias: values must be finite"),
    ],
)
def test_validate_weights_refuses_anything_else(
    change: dict[str, torch.Tensor | None], words: str
) -> None:
    tensors = lenet_weights()
    for name, tensor in change.items():
        if tensor is None:
            del tensors[name]
        else:
            tensors[name] = tensor
    refused(lambda: validate_weights(tensors), words)


def test_save_weights_is_byte_stable_and_loads_back_equal() -> None:
    tensors = lenet_weights(4)
    metadata = {"version": "12", "step": "3"}
    first = save_weights(tensors, metadata)
    # Another call, with the tensors and metadata in other orders, gives the same bytes.
    reordered = dict(reversed(list(tensors.items())))
    for _ in range(5):
        assert save_weights(reordered, {"step": "3", "version": "12"}) == first
    loaded = load_safetensors(first)
    assert set(loaded) == set(PARAMETER_SHAPES)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == torch.float32 and torch.equal(loaded[name], tensor), name
    # The header is sorted JSON padded to 8 bytes, as the format allows.
    length = int.from_bytes(first[:8], "little")
    assert length % 8 == 0 and (8 + length) % 8 == 0
    header = first[8 : 8 + length].decode()
    assert header.rstrip(" ").endswith("}")
    keys = re.findall(r'"([^"]+)":\{', header)
    assert keys == sorted(keys)


def test_save_weights_keeps_the_metadata(tmp_path: Any) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(save_weights(lenet_weights(), {"version": "7", "step": "0"}))
    with safe_open(str(path), framework="pt") as reader:
        assert reader.metadata() == {"version": "7", "step": "0"}
    assert save_weights(lenet_weights(1), {}) != save_weights(lenet_weights(2), {})
