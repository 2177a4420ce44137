"""Write app/static/digits.json: scikit-learn's `load_digits` with `lenet train`'s held-out split.

The web page trains on these 8x8 images through POST /train-step and measures held-out accuracy
through POST /predict; the server resizes 8x8 to 32x32 bilinearly, as the contract says.

Each image is one string of 64 characters, row by row, one base-17 digit per pixel
('0'-'9', 'a'-'g' = 0..16, the data set's own integer scale): `int(c, 17)` in Python,
`parseInt(c, 17)` in JavaScript. That keeps the file near 130 KB instead of ~300 KB of
JSON integer arrays, and it stays readable text that diffs well.

The split is `lenet_client.datasets.stratified_split`, the one `lenet train` uses: the page and
the command hold out the same 20% of each class, so their accuracies are comparable.

Usage: python scripts/make_digits_json.py [--out app/static/digits.json]
"""

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from lenet_client.datasets import (
    DIGITS_MAX_VALUE,
    EVAL_FRACTION,
    SPLIT_SEED,
    digits_arrays,
    stratified_split,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "app" / "static" / "digits.json"
BASE = DIGITS_MAX_VALUE + 1  # pixel values are 0..16
ALPHABET = "0123456789abcdefg"


def encode_image(image: np.ndarray) -> str:
    """One 8x8 image of ints 0..16 as 64 base-17 characters, row by row."""
    flat = image.reshape(-1).astype(np.int64)
    assert flat.size == 64 and flat.min() >= 0 and flat.max() < BASE, "load_digits is 8x8, 0..16"
    return "".join(ALPHABET[value] for value in flat)


def decode_image(text: str) -> np.ndarray:
    """The inverse of `encode_image`: an (8, 8) array of ints 0..16."""
    return np.array([int(char, BASE) for char in text], dtype=np.int64).reshape(8, 8)


def build() -> dict[str, Any]:
    """The data set and its fixed, stratified split as a JSON-ready dict."""
    images, labels = digits_arrays()  # (1797, 8, 8) ints 0..16, (1797,)
    train_idx, held_out_idx = stratified_split(labels, EVAL_FRACTION, SPLIT_SEED)

    def split(indices: np.ndarray) -> dict[str, Any]:
        return {
            "images": [encode_image(images[i]) for i in indices],
            # one character per label: the labels are single digits 0-9
            "labels": "".join(str(int(labels[i])) for i in indices),
        }

    return {
        "source": "sklearn.datasets.load_digits",
        "side": 8,
        "max_value": BASE - 1,
        "encoding": "each image: 64 base-17 characters ('0'-'9','a'-'g' = 0..16), row by row",
        "split": {
            "method": "lenet_client.datasets.stratified_split",
            "test_size": EVAL_FRACTION,
            "random_state": SPLIT_SEED,
            "stratify": True,
        },
        "train": split(train_idx),  # sorted indices, as stratified_split answers them
        "held_out": split(held_out_idx),
    }


def main() -> None:
    """Generate the file (deterministically: the same bytes on every run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    data = build()
    # indent=1 puts one image per line: still compact, and a diff shows which images changed.
    args.out.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
