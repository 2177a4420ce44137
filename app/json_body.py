"""JSON request bodies, torch-free: inflate, parse, and turn the images into one array.

`decode_json_body` is the whole decoding of a JSON route's body: undo its Content-Encoding
(gzip or deflate, counted against the body limit once inflated), parse it, and turn the nested
`inputs` into one float32 array, checked for type, shape, batch limit and finiteness. A body
that simdjson parses, and whose `inputs` it can prove rectangular, numeric and within the
limits, is decoded by it (`accepted_body`, 1.6-3.4x faster); every other body, and so every
error, goes through orjson and the level-by-level checks (`decode_with_orjson`), which the
simdjson path must equal value for value.
It is the slow part of a big request: a 64 MiB body of numbers takes seconds of C code that holds
the GIL. So `BodyDecoder` runs it inline for small bodies and, for large ones, in a worker
process, where it cannot stall the event loop: every other request (`GET /healthz` too) is
answered meanwhile. Both paths run the same function, so a body gets the same answer on either.
This module imports no torch, so that the worker starts small.

Arrays are checked level by level with C-level `map`/`set` calls (types, lengths) and turned into
one numpy array, never with a Python loop over numbers; every rejection names what was wrong.
"""

import asyncio
import logging
import math
import multiprocessing
import threading
import zlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import chain
from typing import Any

import numpy as np
import orjson
import simdjson

from app.errors import (
    BadRequest,
    DeviceUnavailable,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
)

logger = logging.getLogger("lenet.body")

MiB = 1024 * 1024
# What is decoded on the event loop: the cost is in the numbers, about 0.1 us each in orjson and
# as much again making the array, so a body with up to INLINE_NUMBERS of them (one forward pass
# of 256 images and some room: tens of milliseconds) stays inline, and so does a base64 body
# (one long string, parsed at memory speed) of up to INLINE_BYTES. A compressed body is inline
# only if it inflates within INLINE_COMPRESSED_BYTES: its ratio is unknown until then.
INLINE_NUMBERS = 300_000
INLINE_BYTES = 16 * MiB
INLINE_COMPRESSED_BYTES = 1 * MiB
IMAGES_FIELD = "inputs"

_NUMBER_TYPES = frozenset({int, float})
_JSON_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    type(None): "null",
    dict: "an object",
    list: "an array",
    int: "a number",
    float: "a number",
}


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a JSON body that must be an object (NaN and Infinity literals are not JSON)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        if str(error).startswith("Not enough memory"):
            raise DeviceUnavailable("the host ran out of memory reading the body") from error
        raise BadRequest(f"the body is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise InvalidInput(f"the body must be a JSON object, got {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def nested_to_array(value: Any, field: str, max_rank: int) -> np.ndarray:
    """A rectangular nested JSON array of numbers -> float64 ndarray; no coercion of types."""
    if not isinstance(value, list):
        raise InvalidInput(f"{field} must be an array, got {_describe(value)}")
    shape: list[int] = []
    arrays: list[list[Any]] = [value]  # every array at the current depth
    while True:
        lengths = set(map(len, arrays))
        if len(lengths) != 1:
            raise InvalidInput(f"{field} is ragged: arrays at depth {len(shape)} differ in length")
        length = lengths.pop()
        if length == 0:
            raise InvalidInput(f"{field} is empty along dimension {len(shape)}")
        shape.append(length)
        if len(shape) > max_rank:
            raise InvalidInput(f"{field} has more than {max_rank} dimensions")
        children = list(chain.from_iterable(arrays))
        child_types = set(map(type, children))
        if list not in child_types:
            break
        if child_types != {list}:
            raise InvalidInput(f"{field} is ragged: depth {len(shape)} mixes arrays and numbers")
        arrays = children
    if not child_types <= _NUMBER_TYPES:
        bad = sorted(_describe_type(kind) for kind in child_types - _NUMBER_TYPES)
        raise InvalidInput(f"{field} must hold only numbers, found {', '.join(bad)}")
    try:
        array = np.array(children, dtype=np.float64)
    except OverflowError as error:
        raise InvalidInput(f"{field} holds a number too large for float32") from error
    return array.reshape(shape)


def _describe_type(kind: type) -> str:
    return _JSON_TYPE_NAMES.get(kind, kind.__name__)


def _finite_float32(array: np.ndarray, field: str) -> np.ndarray:
    """`array` as float32, refusing values that are not finite once in float32 (1e39, say)."""
    with np.errstate(over="ignore", invalid="ignore"):
        result = array.astype(np.float32, copy=False)
    if not np.isfinite(result).all():
        raise InvalidInput(f"{field} must hold finite float32 values (no NaN, Infinity or >3.4e38)")
    return result


def decode_content(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """Undo a gzip or deflate Content-Encoding, refusing more than `max_bytes` once inflated."""
    data = _inflate(body, content_encoding, max_bytes)
    if data is None:
        raise PayloadTooLarge(
            f"the decompressed body is over the limit of {max_bytes} bytes (LENET_MAX_BODY_BYTES)"
        )
    return data


def _inflate(body: bytes, content_encoding: str | None, limit: int) -> bytes | None:
    """The inflated body, or None when it is larger than `limit`."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body if len(body) <= limit else None
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(
            f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none"
        )
    # gzip has its own header; "deflate" in HTTP means the zlib format.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        # A bounded inflate, so a small compressed bomb cannot take the memory.
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise BadRequest(f"the body is not valid {encoding} data: {error}") from error
    if len(data) > limit:
        return None
    if not inflater.eof or inflater.unused_data:
        raise BadRequest(f"the body is not one complete {encoding} stream")
    return data


# The ranks of `inputs` whose first dimension is a batch: [N, H, W] and [N, 1, H, W].
BATCHED_RANKS = (3, 4)


def batch_size_of(value: Any) -> int | None:
    """The batch size nested `inputs` claim (rank 3 or 4), read before anything is built."""
    rank, probe = 0, value
    while isinstance(probe, list) and probe:
        rank += 1
        probe = probe[0]
    return len(value) if rank in BATCHED_RANKS else None


def check_batch_size(count: int, max_batch_size: int, field: str) -> None:
    """Refuse (422) a request of more than `max_batch_size` images, naming the limit."""
    if count > max_batch_size:
        raise InvalidInput(
            f"{field}: batch of {count} images is over the limit of {max_batch_size} "
            "(LENET_MAX_BATCH_SIZE)"
        )


def nested_images(value: Any, field: str, max_batch_size: int) -> np.ndarray:
    """Nested `inputs` -> float32 array of their own rank (2, 3 or 4), finite, checked against
    the batch limit before anything big is built from an oversized request."""
    claimed = batch_size_of(value)
    if claimed is not None:
        check_batch_size(claimed, max_batch_size, field)
    return _finite_float32(nested_to_array(value, field, max_rank=4), field)


# simdjson accepts a UTF-8 byte order mark that orjson refuses.
_BYTE_ORDER_MARK = b"\xef\xbb\xbf"
# One parser per thread for small bodies: its buffers are reused from body to body (10 us saved
# on a one-image body); a parser must not parse again while values of its last document are
# alive. A parser keeps buffers about 13 times the largest document it parsed (200 MB after
# 16 MB of zeros), so a larger body gets a parser of its own, freed with it: bounded memory, for
# about 10 ms of fresh pages on a 5 MB body in the server.
_parsers = threading.local()
REUSED_PARSER_BYTES = 256 * 1024


def _thread_parser() -> simdjson.Parser:
    """This thread's parser for small bodies, its buffers capped at REUSED_PARSER_BYTES."""
    parser: simdjson.Parser | None = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser(max_capacity=REUSED_PARSER_BYTES)
    return parser


def count_byte(data: bytes, byte: bytes) -> int:
    """How many times `byte` occurs in `data`: numpy compares at SIMD speed, three times
    `bytes.count` (0.6 against 1.9 ms in a 5 MB body)."""
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == ord(byte)))


def accepted_body(body: bytes, max_batch_size: int) -> dict[str, Any] | None:
    """The body decoded by simdjson when it is certain to be what the orjson path accepts, the
    same values to the bit; else None, and the orjson path decides (and names the error).

    A body without `inputs` (the base64 form, say) is simdjson's plain values: 0.5 against
    0.8 ms for orjson with 256 images as base64. With `inputs`, the speed is in the numbers:
    simdjson parses them and `as_buffer` copies them into one float64 buffer in C (9.9 ms for
    256 images, against 33.7 ms for orjson and the array checks). `as_buffer` flattens
    whatever nesting it finds, so rectangularity is proven apart:
    every array above the last level is walked (lengths and types), and the count of `[` in the
    body, less the count in the other fields, must be exactly the number of arrays that shape
    has, so no number was an array in disguise (`[2]`)."""
    # A backslash may be a \u escape that spells a bracket the count below would miss; one
    # byte is searched at memchr speed (0.2 ms in 5 MB).
    if body.startswith(_BYTE_ORDER_MARK) or b"\\" in body:
        return None
    parser = simdjson.Parser() if len(body) > REUSED_PARSER_BYTES else _thread_parser()
    try:
        document = parser.parse(body)
    except Exception:  # noqa: BLE001 - any refusal: the orjson path gives the answer
        return None
    if not isinstance(document, simdjson.Object):
        return None
    keys = list(document.keys())
    if len(set(keys)) != len(keys):
        return None  # duplicate keys: orjson keeps the last, the lookup here the first
    if IMAGES_FIELD not in keys:
        return {key: _as_python(document[key]) for key in keys}
    images = document[IMAGES_FIELD]
    if not isinstance(images, simdjson.Array):
        return None
    shape = _rectangular_shape(images)
    if shape is None or (len(shape) in BATCHED_RANKS and shape[0] > max_batch_size):
        return None
    decoded = {key: _as_python(document[key]) for key in keys if key != IMAGES_FIELD}
    arrays = sum(math.prod(shape[:depth]) for depth in range(len(shape)))
    if count_byte(body, b"[") - orjson.dumps(decoded).count(b"[") != arrays:
        return None
    try:
        values = np.frombuffer(images.as_buffer(of_type="d"), dtype=np.float64)
    except Exception:  # noqa: BLE001 - a string, boolean, null or object among the numbers
        return None
    if values.size != math.prod(shape):
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        array = values.astype(np.float32).reshape(shape)
    if not np.isfinite(array).all():
        return None
    return {key: array if key == IMAGES_FIELD else decoded[key] for key in keys}


def _rectangular_shape(images: simdjson.Array) -> list[int] | None:
    """The shape of a simdjson array whose arrays above the last level are all of one length
    per level (at most 4 levels, none empty), or None. The last level's elements are not
    looked at: that would make a Python object of every number."""
    shape: list[int] = []
    level: list[Any] = [images]
    while True:
        lengths = set(map(len, level))
        if len(lengths) != 1 or 0 in lengths or len(shape) == 4:
            return None
        shape.append(lengths.pop())
        if not isinstance(level[0][0], simdjson.Array):
            return shape
        children = list(chain.from_iterable(level))
        if set(map(type, children)) != {simdjson.Array}:
            return None
        level = children


def _as_python(value: Any) -> Any:
    """A simdjson value as the plain Python value orjson would have made of it."""
    if isinstance(value, simdjson.Array):
        return value.as_list()
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    return value


class DeferredError:
    """An array that failed its checks while the body was decoded; the error is raised where
    the array is used, so that a body's errors come in the same order however it was decoded."""

    def __init__(self, error: InvalidInput) -> None:
        self.error = error


def _decode_array(value: Any, convert: Any) -> Any:
    if not isinstance(value, list):
        return value
    try:
        return convert(value)
    except InvalidInput as error:
        return DeferredError(error)


def decode_json_body(
    raw: bytes, content_encoding: str | None, max_bytes: int, max_batch_size: int
) -> dict[str, Any]:
    """A JSON route's body, whole: inflated, parsed, its nested `inputs` one float32 array (or
    the `DeferredError` that says what is wrong with them)."""
    data = decode_content(raw, content_encoding, max_bytes)
    accepted = accepted_body(data, max_batch_size)
    return accepted if accepted is not None else decode_with_orjson(data, max_batch_size)


def decode_with_orjson(data: bytes, max_batch_size: int) -> dict[str, Any]:
    """An inflated JSON body parsed by orjson, its `inputs` checked level by level: the path
    that names what is wrong with a body, and the reference the simdjson path must equal."""
    body = parse_json_object(data)
    if IMAGES_FIELD in body:
        body[IMAGES_FIELD] = _decode_array(
            body[IMAGES_FIELD], lambda value: nested_images(value, IMAGES_FIELD, max_batch_size)
        )
    return body


# The KServe v2 binary tensor extension: this header says how many leading bytes are JSON.
HEADER_LENGTH = "Inference-Header-Content-Length"
INFER_DATA_FIELD = "input 'input' data"


def split_infer_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of a v2 inference request body."""
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()):
        raise BadRequest(f"{HEADER_LENGTH} must be a non-negative integer, got {header_length!r}")
    # Compared by length first: int() refuses texts past 4300 digits (a 500, not a 400).
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(len(body))) or int(digits) > len(body):
        shown = digits if len(digits) <= 20 else f"{len(digits)} digits long"
        raise BadRequest(f"{HEADER_LENGTH} is {shown} but the body has only {len(body)} bytes")
    length = int(digits)
    return body[:length], body[length:]


def decode_infer_body(
    raw: bytes, content_encoding: str | None, header_length: str | None, max_bytes: int
) -> tuple[Any, bytes]:
    """A v2 inference request, inflated and split: its parsed JSON (each input's nested `data`
    one float64 array, or its `DeferredError`) and the binary tensor bytes after it."""
    json_part, binary = split_infer_body(
        decode_content(raw, content_encoding, max_bytes), header_length
    )
    try:
        request = orjson.loads(json_part)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the inference request is not valid JSON: {error}") from error
    inputs = request.get("inputs") if isinstance(request, dict) else None
    for tensor in inputs if isinstance(inputs, list) else ():
        if isinstance(tensor, dict) and "data" in tensor:
            tensor["data"] = _decode_array(
                tensor["data"], lambda value: nested_to_array(value, INFER_DATA_FIELD, 4)
            )
    return request, binary


class BodyDecoder:
    """Runs `decode_json_body` inline for small bodies, in one worker process for large ones.

    The worker is started on the first large body (most services never see one) and is a
    "spawn" process: no copy of torch's threads or of the served weights."""

    def __init__(self, max_bytes: int, max_batch_size: int) -> None:
        self.max_bytes = max_bytes
        self.max_batch_size = max_batch_size
        self._pool: ProcessPoolExecutor | None = None

    def _is_small(self, raw: bytes, content_encoding: str | None) -> bool:
        if content_encoding is not None:
            # The bounded inflate costs about a millisecond; the inline decode inflates again.
            raw = _inflate(raw, content_encoding, INLINE_COMPRESSED_BYTES) or b""
            if not raw:
                return False
        # Every number but the last of an array is followed by a comma: count those.
        if len(raw) <= INLINE_NUMBERS:  # fewer bytes than the budget: fewer numbers too
            return True
        return len(raw) <= INLINE_BYTES and count_byte(raw, b",") <= INLINE_NUMBERS

    async def decode(self, raw: bytes, content_encoding: str | None) -> dict[str, Any]:
        """A JSON route's body (`decode_json_body`), where it cannot stall other requests."""
        job = (raw, content_encoding, self.max_bytes, self.max_batch_size)
        decoded: dict[str, Any] = await self._run(decode_json_body, job)
        return decoded

    async def decode_infer(
        self, raw: bytes, content_encoding: str | None, header_length: str | None
    ) -> tuple[Any, bytes]:
        """A v2 inference body (`decode_infer_body`), where it cannot stall other requests."""
        job = (raw, content_encoding, header_length, self.max_bytes)
        decoded: tuple[Any, bytes] = await self._run(decode_infer_body, job)
        return decoded

    async def _run(self, decode: Any, job: tuple[Any, ...]) -> Any:
        raw, content_encoding = job[0], job[1]
        if self._is_small(raw, content_encoding):
            return decode(*job)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, decode, *job)
        except BrokenProcessPool as error:
            # The worker died (out of memory, say): the next large body gets a fresh one.
            logger.error("the body decoding worker died; starting a new one on next use")
            self._pool = None
            raise DeviceUnavailable(
                "the body could not be decoded (the worker process ran out of resources)"
            ) from error

    def close(self) -> None:
        """Stop the worker, if one was started (after the body it may be decoding)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
