"""Training data for `lenet train`, in pure numpy: scikit-learn's digits, MNIST's IDX files and
folders of labelled images. Nothing is downloaded; every loader answers images (N, H, W) float32
in [0, 1] and labels (N,) int64 in 0-9, split into a training and a held-out part.

`stratified_split` is the one held-out split of the digits: `lenet train` and the web page's
`app/static/digits.json` (written by scripts/make_digits_json.py) hold out the same images."""

import gzip
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The network's side: images of a folder that differ in size are brought to it, as the server
# would. models.constants is plain Python: no torch here.
from models.constants import IMAGE_SIDE, NUM_CLASSES

# The held-out split does not depend on --seed: the same images are held out on every run, so
# accuracies of different runs (and different optimizers) are comparable.
SPLIT_SEED = 0
EVAL_FRACTION = 0.2  # of each class, held out
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})

# IDX: 2 zero bytes, a type code, the number of dimensions, then one big-endian uint32 per
# dimension and the data, big-endian. https://yann.lecun.com/exdb/mnist/ (bottom of the page)
_IDX_TYPES: dict[int, np.dtype[np.generic]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_MNIST_IMAGES_MAGIC = 0x00000803  # 2051: unsigned bytes, 3 dimensions
_MNIST_LABELS_MAGIC = 0x00000801  # 2049: unsigned bytes, 1 dimension


class DatasetError(Exception):
    """Data that cannot be read or does not have the expected form; the message says why."""


@dataclass(frozen=True)
class Dataset:
    """Images in [0, 1] and their class indices, as a training part and a held-out part."""

    name: str
    train_images: np.ndarray  # (N, H, W) float32
    train_labels: np.ndarray  # (N,) int64
    eval_images: np.ndarray  # (M, H, W) float32
    eval_labels: np.ndarray  # (M,) int64

    def __post_init__(self) -> None:
        for images, labels in (
            (self.train_images, self.train_labels),
            (self.eval_images, self.eval_labels),
        ):
            assert images.ndim == 3 and images.dtype == np.float32, (images.shape, images.dtype)
            assert labels.shape == (images.shape[0],) and labels.dtype == np.int64

    def describe(self) -> str:
        """One line: how many images of which size for training and for evaluation."""
        height, width = self.train_images.shape[1:]
        return (
            f"{self.name}: {len(self.train_labels)} training and {len(self.eval_labels)} "
            f"held-out images of {height}x{width}"
        )


def stratified_split(
    labels: np.ndarray, eval_fraction: float, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, eval): each class gives round(fraction * its count) images to eval."""
    if not 0 < eval_fraction < 1:
        raise DatasetError(f"the held-out fraction must be between 0 and 1, got {eval_fraction}")
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    held_out: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = int(round(eval_fraction * len(members)))
        if count == 0 or count == len(members):
            raise DatasetError(
                f"class {label} has {len(members)} image(s): too few to hold out "
                f"{eval_fraction:.0%} of them and still train on some"
            )
        held_out.append(members[:count])
        train.append(members[count:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held_out))


def _split(name: str, images: np.ndarray, labels: np.ndarray, eval_fraction: float) -> Dataset:
    train, held_out = stratified_split(labels, eval_fraction)
    return Dataset(name, images[train], labels[train], images[held_out], labels[held_out])


# ---------------------------------------------------------------- scikit-learn's digits


DIGITS_MAX_VALUE = 16  # load_digits' pixels are integers 0-16


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as they ship: images (N, 8, 8) of ints 0-16, labels (N,)."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits  # the data ships with it
    except ModuleNotFoundError as error:
        raise DatasetError(
            "the digits come from scikit-learn, which is not installed: "
            "pip install 'lenet-serve[train]'"
        ) from error
    bunch = sklearn_digits()
    return np.asarray(bunch.images, dtype=np.int64), np.asarray(bunch.target, dtype=np.int64)


def load_digits(eval_fraction: float = EVAL_FRACTION) -> Dataset:
    """scikit-learn's 1,797 8x8 digits (values 0-16) scaled to [0, 1] and resized to 32x32 as
    the server would, split stratified."""
    raw, labels = digits_arrays()
    # Resized here, not by the server, so that augmentation can shift by pixels of the 32x32
    # image the network sees; 2 such pixels are a sensible shift, a quarter of an 8x8 pixel is
    # not expressible.
    scaled = raw.astype(np.float32) / np.float32(DIGITS_MAX_VALUE)
    images = resize_bilinear(scaled, IMAGE_SIDE, IMAGE_SIDE)
    return _split("digits", images, labels, eval_fraction)


# ---------------------------------------------------------------- MNIST, IDX files


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DatasetError(f"{path}: not a valid gzip file ({error})") from error
    except OSError as error:
        raise DatasetError(f"{path}: cannot read ({error.strerror or error})") from error


def parse_idx(data: bytes, source: str = "IDX data") -> np.ndarray:
    """An IDX file's bytes -> its array in native byte order; every length is checked."""
    if len(data) < 4:
        raise DatasetError(f"{source}: {len(data)} bytes is too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise DatasetError(
            f"{source}: not an IDX file (magic number {data[:4].hex()} does not start with 0000)"
        )
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_TYPES:
        raise DatasetError(f"{source}: unknown IDX data type 0x{type_code:02x}")
    if ndim == 0:
        raise DatasetError(f"{source}: an IDX file needs at least one dimension")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(
            f"{source}: truncated header: {ndim} dimensions need {header} bytes, got {len(data)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[type_code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise DatasetError(
            f"{source}: {kind}: shape {list(shape)} of {dtype.name} needs {expected} bytes "
            f"in all, the file has {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed (by its `.gz` suffix)."""
    return parse_idx(_read_bytes(path), str(path))


def _find_idx(directory: Path, stem: str) -> Path:
    # The files as published (train-images-idx3-ubyte) and as often re-shared (train-images.idx3-
    # ubyte), each plain or gzip-compressed.
    names = [stem, stem.replace("-idx", ".idx")]
    candidates = [directory / (name + suffix) for name in names for suffix in ("", ".gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{directory}: no {stem} file (looked for {', '.join(names)}, plain or .gz)")


def _mnist_part(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
    images_data, labels_data = _read_bytes(images_path), _read_bytes(labels_path)
    for path, data, magic in (
        (images_path, images_data, _MNIST_IMAGES_MAGIC),
        (labels_path, labels_data, _MNIST_LABELS_MAGIC),
    ):
        found = int.from_bytes(data[:4], "big")
        if len(data) >= 4 and found != magic:
            raise DatasetError(
                f"{path}: magic number {found} (0x{found:08x}), expected {magic} (0x{magic:08x})"
            )
    images, labels = (
        parse_idx(images_data, str(images_path)),
        parse_idx(labels_data, str(labels_path)),
    )
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels"
        )
    if len(labels) == 0:
        raise DatasetError(f"{images_path}: no images")
    if labels.max() >= NUM_CLASSES:
        raise DatasetError(f"{labels_path}: label {int(labels.max())} is not a digit 0-9")
    return (images / np.float32(255)).astype(np.float32), labels.astype(np.int64)


def load_mnist(directory: Path) -> Dataset:
    """MNIST from its four IDX files in `directory`; t10k is the held-out part. Pixels / 255."""
    if not directory.is_dir():
        raise DatasetError(f"{directory}: not a directory")
    train_images, train_labels = _mnist_part(directory, "train")
    eval_images, eval_labels = _mnist_part(directory, "t10k")
    if train_images.shape[1:] != eval_images.shape[1:]:
        raise DatasetError(
            f"{directory}: training images are {train_images.shape[1:]}, test images "
            f"{eval_images.shape[1:]}"
        )
    return Dataset("mnist", train_images, train_labels, eval_images, eval_labels)


# ---------------------------------------------------------------- a folder of images


def resize_bilinear(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W) -> (N, height, width), as torch's bilinear interpolate with
    align_corners=False and no antialiasing (the server's resize), in numpy."""

    def weights(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # torch's area_pixel_compute_source_index, then its clamp of negative sources to 0.
        source = (np.arange(size_out, dtype=np.float64) + 0.5) * (size_in / size_out) - 0.5
        source = np.maximum(source, 0.0)
        low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
        high = np.minimum(low + 1, size_in - 1)
        return low, high, (source - low).astype(np.float32)

    rows_low, rows_high, row_weight = weights(images.shape[1], height)
    cols_low, cols_high, col_weight = weights(images.shape[2], width)
    row_weight = row_weight[:, None]
    top: np.ndarray = images[:, rows_low] * (1 - row_weight) + images[:, rows_high] * row_weight
    result: np.ndarray = top[:, :, cols_low] * (1 - col_weight) + top[:, :, cols_high] * col_weight
    return result.astype(np.float32)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            gray = np.asarray(image.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DatasetError(f"{path}: not a readable image ({error})") from error
    return gray / np.float32(255)


def load_folder(
    directory: Path, eval_fraction: float = EVAL_FRACTION, invert: bool = False
) -> Dataset:
    """Images under `directory/<0-9>/` (PNG or JPEG), grayscale in [0, 1], split stratified.

    Images of one size are kept as they are (the server resizes them); when sizes differ, each
    is resized to 32x32 here, with the server's own bilinear resize, so that batches stack.
    `invert` turns dark-on-light digits into MNIST's light-on-dark."""
    if not directory.is_dir():
        raise DatasetError(f"{directory}: not a directory")
    label_dirs = sorted(p for p in directory.iterdir() if p.is_dir())
    unexpected = [p.name for p in label_dirs if p.name not in {str(d) for d in range(NUM_CLASSES)}]
    if unexpected:
        raise DatasetError(
            f"{directory}: sub-folders must be named 0-9 after their label; found {unexpected}"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label_dir in label_dirs:
        files = sorted(
            p for p in label_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        paths.extend(files)
        labels.extend([int(label_dir.name)] * len(files))
    if not paths:
        raise DatasetError(f"{directory}: no .png or .jpg images in sub-folders 0-9")
    images = _stack([_read_image(path) for path in paths])
    if invert:
        images = (1 - images).astype(np.float32)
    return _split(f"folder {directory}", images, np.asarray(labels, dtype=np.int64), eval_fraction)


def _stack(images: Sequence[np.ndarray]) -> np.ndarray:
    if len({image.shape for image in images}) == 1:
        return np.stack(images)
    return np.concatenate(
        [resize_bilinear(image[None], IMAGE_SIDE, IMAGE_SIDE) for image in images]
    )


# ---------------------------------------------------------------- augmentation


def random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Each image (N, H, W) moved by its own random whole-pixel offset in [-max_shift,
    max_shift] along each axis, with zeros (the background) coming in at the edges."""
    if max_shift <= 0:
        return images
    count, height, width = images.shape
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    offsets = rng.integers(0, 2 * max_shift + 1, size=(count, 2))
    rows = offsets[:, 0, None] + np.arange(height)  # (N, H)
    cols = offsets[:, 1, None] + np.arange(width)  # (N, W)
    shifted: np.ndarray = padded[np.arange(count)[:, None, None], rows[:, :, None], cols[:, None]]
    return shifted
