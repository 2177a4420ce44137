"""POST /predict/image: uploaded PNG and JPEG files give the answers of POST /predict on the same
processed pixels, and anything else is refused with a message that names the problem."""

import base64
import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image

Upload = tuple[str, tuple[str, bytes, str]]


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    """An image file of `pixels` (uint8, (H, W) grayscale or (H, W, 3) RGB)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def random_pixels(height: int, width: int, seed: int, channels: int | None = None) -> np.ndarray:
    shape = (height, width) if channels is None else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def processed(data: bytes) -> torch.Tensor:
    """The contract's pipeline, done here: convert("L"), / 255, bilinear to 32x32 -> (1, 32, 32)."""
    gray = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32) / 255
    image = torch.from_numpy(gray)[None, None]
    resized = F.interpolate(
        image, size=(32, 32), mode="bilinear", align_corners=False, antialias=False
    )
    return resized[0]


def predict_tensor(client: TestClient, images: torch.Tensor) -> dict[str, object]:
    """POST /predict with (N, 1, 32, 32) float32, sent exactly as the base64 `tensor` form."""
    array = images.numpy().astype("<f4")
    tensor = {
        "shape": list(array.shape),
        "dtype": "float32",
        "data": base64.b64encode(array.tobytes()).decode(),
    }
    response = client.post("/predict", json={"tensor": tensor})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def upload(*files: tuple[str, bytes], field: str = "files") -> list[Upload]:
    return [(field, (name, data, "application/octet-stream")) for name, data in files]


def assert_same_answer(got: dict[str, object], expected: dict[str, object]) -> None:
    np.testing.assert_allclose(
        np.asarray(got["outputs"]), np.asarray(expected["outputs"]), atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(
        np.asarray(got["probabilities"]), np.asarray(expected["probabilities"]), atol=1e-5, rtol=0
    )
    assert got["predictions"] == expected["predictions"]
    assert (got["version"], got["step"]) == (expected["version"], expected["step"])


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is a few bytes: decoding
    it would fail (or, at a real size, take gigabytes), reading its size does not."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_files_of_mixed_sizes_and_formats_match_predict(client: TestClient) -> None:
    files = [
        ("digit.png", encode(random_pixels(32, 32, seed=1))),
        ("mnist.png", encode(random_pixels(28, 28, seed=2))),
        ("photo.jpg", encode(random_pixels(40, 30, seed=3, channels=3), "JPEG")),
        ("wide.png", encode(random_pixels(20, 64, seed=4, channels=3))),
    ]
    response = client.post("/predict/image", files=upload(*files))
    assert response.status_code == 200, response.text
    expected = predict_tensor(client, torch.stack([processed(data) for _, data in files]))
    assert set(response.json()) == {"outputs", "predictions", "probabilities", "version", "step"}
    assert_same_answer(response.json(), expected)


def test_invert(client: TestClient) -> None:
    data = encode(random_pixels(28, 28, seed=5))
    inverted = client.post("/predict/image", params={"invert": "true"}, files=upload(("d", data)))
    plain = client.post("/predict/image", params={"invert": "false"}, files=upload(("d", data)))
    assert inverted.status_code == plain.status_code == 200, inverted.text
    assert_same_answer(inverted.json(), predict_tensor(client, 1 - processed(data)[None]))
    assert_same_answer(plain.json(), predict_tensor(client, processed(data)[None]))
    assert (
        client.post(
            "/predict/image", params={"invert": "maybe"}, files=upload(("d", data))
        ).status_code
        == 422
    )


BAD_FILES = [
    ("notes.txt", b"these are not pixels", "not a PNG or JPEG image"),
    ("empty.png", b"", "not a PNG or JPEG image"),
    ("anim.gif", encode(random_pixels(8, 8, seed=6), "GIF"), "not a PNG or JPEG image"),
    ("cut.png", encode(random_pixels(32, 32, seed=7))[:60], "corrupt or truncated"),
    ("big.png", encode(random_pixels(20, 300, seed=8)), "image of 20x300 is over the side"),
    # Headers that claim huge images: refused from the header, before any pixel is decoded
    # (decoding the first would fail as truncated, with another message).
    ("claims.png", png_header(5000, 5000), "image of 5000x5000 is over the side"),
    ("bomb.png", png_header(100_000, 100_000), "over the side limit of 256"),
]


@pytest.mark.parametrize(
    ("name", "data", "message"), [pytest.param(*case, id=case[0]) for case in BAD_FILES]
)
def test_bad_files_are_refused(client: TestClient, name: str, data: bytes, message: str) -> None:
    good = ("good.png", encode(random_pixels(32, 32, seed=9)))
    response = client.post("/predict/image", files=upload(good, (name, data)))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert message in detail
    assert f"files[1] ('{name}')" in detail
    if "side" in message:
        assert "LENET_MAX_IMAGE_SIDE" in detail


def test_upload_shape_is_checked(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_upload_files=2)
    data = encode(random_pixels(32, 32, seed=10))
    three = client.post("/predict/image", files=upload(("a", data), ("b", data), ("c", data)))
    assert three.status_code == 422
    assert "at most 2 files" in three.json()["detail"]
    assert "LENET_MAX_UPLOAD_FILES" in three.json()["detail"]
    assert client.post("/predict/image", files=upload(("a", data), ("b", data))).status_code == 200
    wrong_field = client.post("/predict/image", files=upload(("a", data), field="file"))
    assert wrong_field.status_code == 422
    assert "'file'" in wrong_field.json()["detail"]
    as_text = client.post(
        "/predict/image",
        content=b'--b\r\nContent-Disposition: form-data; name="files"\r\n\r\nhello\r\n--b--\r\n',
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert as_text.status_code == 422
    assert "not text fields" in as_text.json()["detail"]
    nothing = client.post(
        "/predict/image",
        content=b"--b--\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert nothing.status_code == 422
    assert "no image" in nothing.json()["detail"]
    as_json = client.post("/predict/image", json={"inputs": [[0.0]]})
    assert as_json.status_code == 415
    assert "multipart/form-data" in as_json.json()["detail"]
