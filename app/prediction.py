"""One forward pass for predictions, and its answer: logits, softmax and argmax as numpy arrays,
computed once per batch and sliced per request (see `app.batching`)."""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Prediction:
    """Logits, softmax and argmax for a batch (numpy, sliced per request from one forward pass),
    and the weights' version and step behind them."""

    logits: np.ndarray
    probabilities: np.ndarray
    predictions: np.ndarray
    version: int
    step: int

    def as_json(self) -> dict[str, Any]:
        """The body of a POST /predict answer (PredictResponse's fields)."""
        return {
            "outputs": self.logits,
            "predictions": self.predictions,
            "probabilities": self.probabilities,
            "version": self.version,
            "step": self.step,
        }

    def rows(self, start: int, end: int) -> "Prediction":
        """The answer for images `start:end` of the batch."""
        return Prediction(
            self.logits[start:end],
            self.probabilities[start:end],
            self.predictions[start:end],
            self.version,
            self.step,
        )


def bucket_size(count: int) -> int:
    """The batch size a forward pass of `count` images runs at: the next of 1, 2, 3, 4, 6, 8,
    12, 16, ... (powers of two and one and a half times them).

    The CPU kernels (oneDNN) compile and cache code for every input shape they see and never
    give it back, so a dynamic batcher that makes every size from 1 to 1024 grows the process by
    gigabytes; a few sizes bound that, at the price of computing at most half as many images
    again, as zero padding that is sliced off. The GPU wants the same few shapes.
    """
    size = 1
    while size < count:
        half_step = size + size // 2
        size = half_step if size >= 2 and half_step >= count else size * 2
    return size


def predict_batch(
    model: torch.nn.Module, images: torch.Tensor, device: torch.device, version: int, step: int
) -> Prediction:
    """`model`'s answer to `images` (N, 1, 32, 32), labelled with the weights' version."""
    count = images.shape[0]
    padding = bucket_size(count) - count
    if padding:
        images = torch.cat([images, images.new_zeros(padding, *images.shape[1:])])
    with torch.inference_mode():
        logits = model(images.to(device, non_blocking=True))[:count]
        probabilities = torch.softmax(logits, dim=1)
        predictions = torch.argmax(logits, dim=1)
        logits_np, probabilities_np = (t.cpu().numpy() for t in (logits, probabilities))
        predictions_np = predictions.cpu().numpy()
    return Prediction(logits_np, probabilities_np, predictions_np, version, step)
