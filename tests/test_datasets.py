"""lenet_client.datasets: IDX, MNIST and folder loaders, the split (shared with the page), the
resize, the shifts."""

import gzip
import importlib.util
import json
import struct
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lenet_client.datasets import (
    DatasetError,
    digits_arrays,
    load_digits,
    load_folder,
    load_mnist,
    parse_idx,
    random_shift,
    read_idx,
    resize_bilinear,
    stratified_split,
)

ROOT = Path(__file__).resolve().parents[1]


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file, written independently of the reader: header by struct, data big-endian."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype[type_code]).tobytes()


def write_mnist(directory: Path, train: int = 12, test: int = 5, compress: bool = False) -> None:
    """Four small MNIST-shaped IDX files: images whose pixels encode their index."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        for name, data in (
            (f"{prefix}-images-idx3-ubyte", idx_bytes(images)),
            (f"{prefix}-labels-idx1-ubyte", idx_bytes(labels)),
        ):
            if compress:
                (directory / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (directory / name).write_bytes(data)


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize(
    ("type_code", "dtype"),
    [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32)],
)
def test_parse_idx_reads_every_type_big_endian(type_code: int, dtype: type) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - (0 if type_code == 0x08 else 12)).astype(dtype)
    parsed = parse_idx(idx_bytes(array, type_code))
    assert parsed.shape == (2, 3, 4)
    assert parsed.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(parsed, array)


def test_read_idx_plain_and_gzip_agree(tmp_path: Path) -> None:
    array = np.random.default_rng(1).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    (tmp_path / "plain").write_bytes(idx_bytes(array))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(tmp_path / "plain"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "packed.gz"), array)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "not an IDX file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown IDX data type 0x07"),
        (b"\x00\x00\x08\x00", "at least one dimension"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00", "truncated header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x05\x06", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x05\x06", "trailing bytes"),
        (b"\x00\x00\x0c\x01\x00\x00\x00\x01\x05\x06\x07", "needs 12 bytes"),
    ],
)
def test_parse_idx_rejects_corrupt_data(data: bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_idx(data)


def test_read_idx_rejects_a_broken_gzip_file(tmp_path: Path) -> None:
    packed = gzip.compress(idx_bytes(np.zeros((4, 4), dtype=np.uint8)))
    (tmp_path / "cut.gz").write_bytes(packed[: len(packed) // 2])
    (tmp_path / "fake.gz").write_bytes(idx_bytes(np.zeros((4, 4), dtype=np.uint8)))
    with pytest.raises(DatasetError, match="cut.gz: not a valid gzip file"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(DatasetError, match="fake.gz: not a valid gzip file"):
        read_idx(tmp_path / "fake.gz")


# ---------------------------------------------------------------- MNIST


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_reads_the_four_files(tmp_path: Path, compress: bool) -> None:
    write_mnist(tmp_path, compress=compress)
    dataset = load_mnist(tmp_path)
    assert dataset.train_images.shape == (12, 28, 28)
    assert dataset.eval_images.shape == (5, 28, 28)
    assert dataset.train_images.dtype == np.float32
    np.testing.assert_array_equal(dataset.train_labels, np.arange(12) % 10)
    np.testing.assert_array_equal(dataset.eval_labels, np.arange(5))
    raw = read_idx(tmp_path / ("train-images-idx3-ubyte" + (".gz" if compress else "")))
    np.testing.assert_allclose(dataset.train_images, raw / 255.0, rtol=1e-6)
    assert dataset.train_images.max() <= 1.0


def test_load_mnist_accepts_the_dotted_names(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    for path in tmp_path.iterdir():
        path.rename(tmp_path / path.name.replace("-idx", ".idx"))
    assert load_mnist(tmp_path).train_images.shape == (12, 28, 28)


def test_load_mnist_names_a_missing_file(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="no t10k-labels-idx1-ubyte file"):
        load_mnist(tmp_path)
    with pytest.raises(DatasetError, match="not a directory"):
        load_mnist(tmp_path / "nowhere")


def test_load_mnist_rejects_swapped_files_by_magic_number(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    labels = tmp_path / "train-labels-idx1-ubyte"
    images_data, labels_data = images.read_bytes(), labels.read_bytes()
    images.write_bytes(labels_data)
    labels.write_bytes(images_data)
    with pytest.raises(DatasetError, match=r"magic number 2049 .*expected 2051"):
        load_mnist(tmp_path)


def test_load_mnist_rejects_mismatched_counts_and_bad_labels(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros(11, dtype=np.uint8)))
    with pytest.raises(DatasetError, match="holds 12 images but .* 11 labels"):
        load_mnist(tmp_path)
    labels.write_bytes(idx_bytes(np.full(12, 10, dtype=np.uint8)))
    with pytest.raises(DatasetError, match="label 10 is not a digit"):
        load_mnist(tmp_path)


def test_load_mnist_rejects_a_truncated_image_file(tmp_path: Path) -> None:
    write_mnist(tmp_path, compress=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-1]))
    with pytest.raises(DatasetError, match="truncated"):
        load_mnist(tmp_path)


# ---------------------------------------------------------------- folders


def write_png(path: Path, pixels: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels.astype(np.uint8))
    image.convert(mode).save(path)


def test_load_folder_reads_labels_from_folder_names(tmp_path: Path) -> None:
    for label in range(3):
        for index in range(5):
            write_png(
                tmp_path / str(label) / f"{index}.png", np.full((28, 28), label * 100 + index)
            )
    # RGB files become grayscale with convert("L"), as POST /predict/image does.
    write_png(tmp_path / "2" / "rgb.png", np.full((28, 28), 255), mode="RGB")
    (tmp_path / "2" / "notes.txt").write_text("not an image")
    dataset = load_folder(tmp_path, eval_fraction=0.2)
    assert dataset.train_images.shape[1:] == (28, 28)  # one size: left for the server to resize
    assert len(dataset.train_labels) + len(dataset.eval_labels) == 16
    assert sorted(dataset.eval_labels.tolist()) == [0, 1, 2]
    everything = np.concatenate([dataset.train_images, dataset.eval_images])
    labels = np.concatenate([dataset.train_labels, dataset.eval_labels])
    # Every image's gray level still says which folder it came from.
    levels = np.round(everything[:, 0, 0] * 255).astype(int)
    np.testing.assert_array_equal(np.minimum(levels // 100, 2), labels)
    inverted = load_folder(tmp_path, eval_fraction=0.2, invert=True)
    np.testing.assert_allclose(inverted.train_images, 1 - dataset.train_images, atol=1e-6)


def test_load_folder_brings_mixed_sizes_to_32x32_as_the_server_would(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    sizes = {0: (28, 28), 1: (40, 20)}
    for label, size in sizes.items():
        for index in range(3):
            write_png(tmp_path / str(label) / f"{index}.png", rng.integers(0, 256, size))
    dataset = load_folder(tmp_path, eval_fraction=0.34)
    assert dataset.train_images.shape[1:] == (32, 32)
    first = np.asarray(Image.open(tmp_path / "1" / "0.png").convert("L"), dtype=np.float32) / 255
    expected = F.interpolate(
        torch.from_numpy(first)[None, None], size=(32, 32), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    candidates = np.concatenate([dataset.train_images, dataset.eval_images])
    assert min(np.abs(image - expected).max() for image in candidates) < 1e-5


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"cats/a.png": None}, r"sub-folders must be named 0-9 .*\['cats'\]"),
        ({"3/a.txt": b"text"}, "no .png or .jpg images"),
        ({"3/a.png": b"not a png", "3/b.png": None}, "a.png: not a readable image"),
        ({"3/a.png": None}, "class 3 has 1 image"),
    ],
)
def test_load_folder_refuses_unusable_folders(
    tmp_path: Path, layout: dict[str, bytes | None], message: str
) -> None:
    for name, content in layout.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            write_png(path, np.zeros((8, 8)))
        else:
            path.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        load_folder(tmp_path)


# ---------------------------------------------------------------- digits, split, resize, shifts


def test_load_digits_holds_out_a_fixed_stratified_fifth() -> None:
    first, second = load_digits(), load_digits()
    np.testing.assert_array_equal(first.eval_images, second.eval_images)
    assert first.train_images.shape == (1438, 32, 32)
    assert first.eval_images.shape == (359, 32, 32)
    assert 0.0 <= first.train_images.min() and first.train_images.max() <= 1.0
    counts = np.bincount(first.eval_labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # each class ~20% of its ~180 images


def test_stratified_split_is_a_deterministic_partition() -> None:
    labels = np.repeat(np.arange(10), [10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
    train, held_out = stratified_split(labels, 0.3)
    assert sorted(np.concatenate([train, held_out]).tolist()) == list(range(len(labels)))
    np.testing.assert_array_equal(held_out, stratified_split(labels, 0.3)[1])
    assert not np.array_equal(held_out, stratified_split(labels, 0.3, seed=1)[1])
    expected = [round(0.3 * count) for count in range(10, 20)]
    assert np.bincount(labels[held_out]).tolist() == expected
    with pytest.raises(DatasetError, match="between 0 and 1"):
        stratified_split(labels, 1.0)


@pytest.mark.parametrize("shape", [(8, 8), (28, 28), (32, 32), (40, 20), (5, 64), (300, 3)])
def test_resize_bilinear_matches_torch_interpolate(shape: tuple[int, int]) -> None:
    images = np.random.default_rng(3).random((2, *shape), dtype=np.float32)
    expected = F.interpolate(
        torch.from_numpy(images)[:, None],
        size=(32, 32),
        mode="bilinear",
        align_corners=False,
        antialias=False,
    )[:, 0].numpy()
    np.testing.assert_allclose(resize_bilinear(images, 32, 32), expected, atol=1e-6)


def test_random_shift_moves_each_image_within_the_bound() -> None:
    images = np.zeros((200, 9, 9), dtype=np.float32)
    images[:, 4, 4] = 1.0
    shifted = random_shift(images, 2, np.random.default_rng(0))
    assert shifted.shape == images.shape
    np.testing.assert_array_equal(shifted.sum(axis=(1, 2)), np.ones(200))
    rows, cols = np.nonzero(shifted.max(axis=2))[1], np.nonzero(shifted.max(axis=1))[1]
    assert set(rows.tolist()) == set(cols.tolist()) == {2, 3, 4, 5, 6}  # every offset happens
    assert random_shift(images, 0, np.random.default_rng(0)) is images


# ---------------------------------------------------------------- the page's digits


def digits_script() -> ModuleType:
    """scripts/make_digits_json.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "make_digits_json", ROOT / "scripts/make_digits_json.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_json_is_what_the_script_writes() -> None:
    """The committed file is the script's output, byte for byte, in its documented format."""
    text = (ROOT / "app/static/digits.json").read_text()
    data = digits_script().build()
    assert text == json.dumps(data, indent=1) + "\n"
    assert list(data) == ["source", "side", "max_value", "encoding", "split", "train", "held_out"]
    assert data["split"]["test_size"] == 0.2 and data["split"]["stratify"] is True


def test_the_page_holds_out_exactly_the_digits_lenet_train_holds_out() -> None:
    page = json.loads((ROOT / "app/static/digits.json").read_text())
    cli = load_digits()  # what `lenet train` trains and evaluates on

    def decoded(part: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
        pixels = [[int(char, page["max_value"] + 1) for char in image] for image in part["images"]]
        images = np.asarray(pixels, dtype=np.float32).reshape(-1, page["side"], page["side"])
        scaled = images / np.float32(page["max_value"])
        return resize_bilinear(scaled, 32, 32), np.asarray(list(part["labels"]), dtype=np.int64)

    held_out_images, held_out_labels = decoded(page["held_out"])
    train_images, train_labels = decoded(page["train"])
    assert len(held_out_labels) == 359 and len(train_labels) == 1438
    # The same images in the same (index) order: the page's held-out indices are the CLI's.
    np.testing.assert_array_equal(held_out_images, cli.eval_images)
    np.testing.assert_array_equal(held_out_labels, cli.eval_labels)
    np.testing.assert_array_equal(train_images, cli.train_images)
    np.testing.assert_array_equal(train_labels, cli.train_labels)
    # And those are stratified_split's indices into scikit-learn's digits.
    raw, labels = digits_arrays()
    _, held_out = stratified_split(labels, 0.2)
    assert page["held_out"]["images"] == [digits_script().encode_image(raw[i]) for i in held_out]
