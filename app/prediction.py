"""One forward pass for predictions, and its answer: logits, softmax and argmax as numpy arrays,
computed once per batch and sliced per request (see `app.batching`).

`Forward` runs the pass for one model on its device, with the fewest copies the device allows:
the batch is padded to its bucket (see `bucket_size`) on the host, in a pinned buffer on CUDA so
that the host-to-device copy is asynchronous; the N x 10 logits come back in one device-to-host
copy, and softmax and argmax are computed from them on the host (numpy), not as two more
kernels and two more copies. On CUDA each bucket can also run as a captured CUDA graph (one
launch instead of a dozen); the graphs read the parameters where they live, so training, which
updates the weights in place, keeps them valid. Optionally the pass runs in bfloat16 (autocast;
the weights and training stay float32).
"""

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from models.lenet import Net, inference_forward

InferenceDtype = Literal["float32", "bfloat16"]


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


def joined(batches: list[torch.Tensor]) -> torch.Tensor:
    """The requests' image batches as one batch for one forward pass (no copy for one)."""
    return batches[0] if len(batches) == 1 else torch.cat(batches)


def split(whole: Prediction, batches: list[torch.Tensor]) -> list[Prediction]:
    """The answer of one forward pass over `joined(batches)`, one per request's batch."""
    ends = np.cumsum([batch.shape[0] for batch in batches]).tolist()
    return [whole.rows(end - batch.shape[0], end) for batch, end in zip(batches, ends, strict=True)]


def bucket_size(count: int) -> int:
    """The batch size a forward pass of `count` images runs at: the next of 1, 2, 3, 4, 6, 8,
    12, 16, ... (powers of two and one and a half times them).

    The CPU kernels (oneDNN) compile and cache code for every input shape they see and never
    give it back, so a dynamic batcher that makes every size from 1 to 1024 grows the process by
    gigabytes; a few sizes bound that, at the price of computing at most half as many images
    again, as zero padding that is sliced off. The GPU wants the same few shapes (one CUDA graph
    each).
    """
    size = 1
    while size < count:
        half_step = size + size // 2
        size = half_step if size >= 2 and half_step >= count else size * 2
    return size


def bucket_sizes(limit: int) -> list[int]:
    """Every bucket that a batch of 1 to `limit` images can run at, smallest first."""
    sizes = [1]
    while sizes[-1] < limit:
        sizes.append(bucket_size(sizes[-1] + 1))
    return sizes


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in the logits' dtype, as torch.softmax computes it (max subtracted)."""
    # Non-finite logits give NaN rows as in torch; the engine refuses those answers anyway.
    with np.errstate(invalid="ignore", over="ignore"):
        exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
        result: np.ndarray = exponentials / exponentials.sum(axis=1, keepdims=True)
    return result


# The largest CPU batch that runs on ATen's own convolutions rather than oneDNN's: oneDNN has a
# fixed cost per call that dominates LeNet's small batches. Measured on the 2-core machine
# (forward pass, torch's default threads, oneDNN / ATen): 236 / 117 us at 1 image, 317 / 191 at
# 4, 453 / 354 at 8, then 639 / 951 at 16 and 7.5 / 8.7 ms at 256.
ATEN_MAX_BATCH = 8


@contextlib.contextmanager
def _small_batch_kernels(device: torch.device, size: int) -> Iterator[None]:
    """ATen's convolutions instead of oneDNN's for a CPU batch of up to ATEN_MAX_BATCH images.

    The switch is process-wide; it is safe because a served process has one engine, whose
    forward passes and training steps all run on its one torch thread, one at a time, and it is
    put back before the next."""
    if device.type != "cpu" or size > ATEN_MAX_BATCH or not torch.backends.mkldnn.enabled:
        yield
        return
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # a ContextProp in the stubs
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True  # type: ignore[assignment]


class _BucketGraph:
    """One bucket's forward pass captured as a CUDA graph: a static input on the device that
    each batch is copied into, and the static output that the replay writes."""

    def __init__(self, forward: "Forward", size: int, image_shape: tuple[int, ...]) -> None:
        device = forward.device
        self.static_input = torch.zeros(size, *image_shape, device=device)
        # Warm up on a side stream before capturing, as torch's CUDA graph notes ask.
        side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                forward.eager(self.static_input)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_output = forward.eager(self.static_input)

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """Replay on `batch` (host or device, the bucket's size); the static output."""
        self.static_input.copy_(batch, non_blocking=True)
        self.graph.replay()
        return self.static_output


class Forward:
    """The prediction forward pass of `model` on `device` (see the module docstring)."""

    def __init__(
        self,
        model: Net,
        device: torch.device,
        dtype: InferenceDtype = "float32",
        cuda_graphs: bool = False,
    ) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self._pinned = device.type == "cuda"
        self._staging: dict[int, torch.Tensor] = {}  # pinned host buffers, one per bucket
        self._graphs: dict[int, _BucketGraph] = {}
        self._graphed_weights: tuple[int, ...] = ()

    def eager(self, images: torch.Tensor) -> torch.Tensor:
        """`model(images)` for images already on the device, in the inference dtype (through
        `inference_forward`: the same values, with a faster pooling)."""
        if self.dtype == "bfloat16":
            # No autocast cache: a captured graph must cast the live weights on every replay.
            with torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False):
                return inference_forward(self.model, images)
        return inference_forward(self.model, images)

    def _padded(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """`images` zero-padded to `size` rows, on the host (in a pinned buffer on CUDA)."""
        count = images.shape[0]
        if not self._pinned:
            if count == size:
                return images
            return torch.cat([images, images.new_zeros(size - count, *images.shape[1:])])
        staging = self._staging.get(size)
        if staging is None or staging.shape[1:] != images.shape[1:]:
            staging = torch.empty(size, *images.shape[1:], pin_memory=True)
            self._staging[size] = staging
        # Safe to overwrite: the previous batch's copy finished before its logits came back.
        staging[:count].copy_(images)
        staging[count:].zero_()
        return staging

    def _graph(self, size: int, image_shape: tuple[int, ...]) -> _BucketGraph:
        # Graphs hold the parameters' addresses: if the tensors were replaced rather than
        # updated in place (a new model loaded), capture again.
        weights = tuple(p.data_ptr() for p in self.model.parameters())
        if weights != self._graphed_weights:
            self._graphs.clear()
            self._graphed_weights = weights
        graph = self._graphs.get(size)
        if graph is None or graph.static_input.shape[1:] != image_shape:
            graph = self._graphs[size] = _BucketGraph(self, size, image_shape)
        return graph

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """The float32 logits (N, 10) of `images` (N, 1, 32, 32, on the host), as numpy."""
        count = images.shape[0]
        size = bucket_size(count)
        with torch.inference_mode(), _small_batch_kernels(self.device, size):
            batch = self._padded(images, size)
            if self.cuda_graphs:
                outputs = self._graph(size, tuple(images.shape[1:])).run(batch)
            else:
                outputs = self.eager(batch.to(self.device, non_blocking=True))
            # The one device-to-host copy of the batch (a no-op on the CPU); it also leaves a
            # graph's static output free for the next replay.
            logits: np.ndarray = outputs[:count].float().cpu().numpy()
        return logits

    def warm_up(self, sizes: list[int], image_shape: tuple[int, ...]) -> float:
        """Run (and on CUDA with graphs, capture) every bucket in `sizes` once; seconds taken."""
        started = time.perf_counter()
        for size in sizes:
            self.logits(torch.zeros(size, *image_shape))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started


def predict_batch(
    model: Net,
    images: torch.Tensor,
    device: torch.device,
    version: int,
    step: int,
    forward: Forward | None = None,
) -> Prediction:
    """`model`'s answer to `images` (N, 1, 32, 32), labelled with the weights' version; through
    `forward` when it runs this model (its buffers, graphs and dtype), else a plain pass."""
    runner = forward if forward is not None and forward.model is model else Forward(model, device)
    logits = runner.logits(images)
    return Prediction(logits, softmax(logits), logits.argmax(axis=1), version, step)
