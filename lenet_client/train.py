"""`lenet train`'s loop: train a running lenet-serve over HTTP, as any client could.

The optimizer is set with PUT /optimizer, every update is a POST /train-step, and accuracy is
measured with POST /predict, all through `LenetClient`; nothing here imports torch or touches
the weights directly. Batches travel in the base64 `tensor` form: no number formatting on this
side, no parsing on the other. The loop does no I/O: it tells a `TrainListener` how it goes, and
`lenet_client.cli` turns that into lines, JSON or a progress bar.
"""

import math
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from app.optimizers import CONFIG_CLASSES, TRAIN_CLIENT_DEFAULTS, OptimizerName
from lenet_client.client import LenetClient
from lenet_client.datasets import Dataset, random_shift

# POST /predict answers at most this many images per request here: well inside the server's
# default LENET_MAX_BATCH_SIZE (1024) and one forward pass of its batcher (256 by default).
EVAL_BATCH_SIZE = 256


@dataclass(frozen=True)
class TrainConfig:
    """What `lenet train` was asked to do."""

    epochs: int
    batch_size: int
    optimizer: dict[str, Any]  # the flat body of PUT /optimizer
    seed: int
    schedule: Literal["cosine", "constant"] = "cosine"
    augment: int = 0  # largest random shift of a training image, in its pixels


@dataclass(frozen=True)
class TrainPlan:
    """What a run is about to do, once the server has taken its optimizer."""

    config: TrainConfig
    optimizer: dict[str, Any]  # as the server answered PUT /optimizer
    first_step: int
    steps_per_epoch: int
    total_steps: int


@dataclass(frozen=True)
class StepProgress:
    """The running figures of the current epoch after one step."""

    epoch: int
    loss: float  # mean over the epoch's images so far
    accuracy: float


@dataclass(frozen=True)
class EpochResult:
    """One epoch's training figures and the held-out accuracy after it."""

    epoch: int
    epochs: int
    train_loss: float
    train_accuracy: float
    held_out_accuracy: float
    correct: int
    total: int
    step: int  # the server's step after the epoch
    version: int
    seconds: float  # since the run started


@dataclass(frozen=True)
class TrainResult:
    """How a run ended: steps taken, the server's counters after them, held-out accuracy."""

    steps: int
    first_step: int
    last_step: int
    version: int
    accuracy: float
    correct: int
    total: int
    seconds: float


class TrainListener(Protocol):
    """What a run reports as it goes."""

    def started(self, plan: TrainPlan) -> None:
        """The optimizer is set; no step is taken yet."""

    def stepped(self, progress: StepProgress) -> None:
        """One /train-step was answered."""

    def epoch_done(self, result: EpochResult) -> None:
        """An epoch ended and its held-out accuracy was measured."""


class Silent:
    """A listener that ignores everything: `train`'s default."""

    def started(self, plan: TrainPlan) -> None:
        """Nothing."""

    def stepped(self, progress: StepProgress) -> None:
        """Nothing."""

    def epoch_done(self, result: EpochResult) -> None:
        """Nothing."""


def optimizer_body(name: OptimizerName, lr: float | None, momentum: float | None) -> dict[str, Any]:
    """The PUT /optimizer body for `name`: `app.optimizers`' client defaults, overridden."""
    body = dict(TRAIN_CLIENT_DEFAULTS[name])
    if lr is not None:
        body["lr"] = lr
    if momentum is not None:
        if "momentum" not in CONFIG_CLASSES[name].model_fields:
            raise ValueError(f"--momentum does not apply to {name}; it has betas instead")
        body["momentum"] = momentum
    return body


def scheduled_lr(base: float, step: int, total: int, warmup: int) -> float:
    """The learning rate of step `step` (0-based) of `total`: a linear warm-up over `warmup`
    steps, then a cosine decay towards 0 that never reaches it (the server refuses lr = 0)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup + 1) / (total - warmup + 1)  # in (0, 1): never lr = 0
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def predicted(client: LenetClient, images: np.ndarray) -> np.ndarray:
    """POST /predict: the predicted class of each image."""
    return np.asarray(client.predict(images, binary=True).predictions, dtype=np.int64)


def evaluate(client: LenetClient, images: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """(correct, total) of the served model on `images`, in POST /predict batches."""
    correct = 0
    for start in range(0, len(labels), EVAL_BATCH_SIZE):
        predictions = predicted(client, images[start : start + EVAL_BATCH_SIZE])
        correct += int((predictions == labels[start : start + EVAL_BATCH_SIZE]).sum())
    return correct, len(labels)


def train(
    client: LenetClient,
    dataset: Dataset,
    config: TrainConfig,
    listener: TrainListener | None = None,
) -> TrainResult:
    """Set the optimizer, run `epochs` shuffled passes of /train-step, evaluate after each."""
    listener = Silent() if listener is None else listener
    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError("epochs and batch size must be at least 1")
    optimizer = client.set_optimizer(config.optimizer)
    first_step = client.model().step
    steps_per_epoch = math.ceil(len(dataset.train_labels) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    # A warm-up of about an epoch keeps momentum from throwing fresh weights into dead ReLUs
    # (measured: without it, some initial weights end at 10% accuracy).
    warmup = min(steps_per_epoch, total_steps // 4)
    listener.started(
        TrainPlan(
            config, optimizer.model_dump(mode="json"), first_step, steps_per_epoch, total_steps
        )
    )
    rng = np.random.default_rng(config.seed)
    started = time.monotonic()
    steps = 0
    correct, total = 0, len(dataset.eval_labels)
    last_step = version = None
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(len(dataset.train_labels))
        loss_sum = 0.0
        seen = hits = 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            images, labels = dataset.train_images[batch], dataset.train_labels[batch]
            images = random_shift(images, config.augment, rng)
            # Running accuracy comes from the same weights the step's loss does: those before
            # the update, through POST /predict, as any client would see them.
            hits += int((predicted(client, images) == labels).sum())
            lr = None
            if config.schedule == "cosine":
                lr = scheduled_lr(optimizer.lr, steps, total_steps, warmup)
            answer = client.train_step(images, labels, lr=lr, binary=True)
            last_step, version = answer.step, answer.version
            steps += 1
            seen += len(batch)
            loss_sum += answer.loss * len(batch)
            listener.stepped(StepProgress(epoch, loss_sum / seen, hits / seen))
        correct, total = evaluate(client, dataset.eval_images, dataset.eval_labels)
        assert last_step is not None and version is not None, "every epoch takes a step"
        listener.epoch_done(
            EpochResult(
                epoch,
                config.epochs,
                loss_sum / seen,
                hits / seen,
                correct / total,
                correct,
                total,
                last_step,
                version,
                time.monotonic() - started,
            )
        )
    assert last_step is not None and version is not None, "at least one epoch of one step"
    seconds = time.monotonic() - started
    return TrainResult(
        steps, first_step, last_step, version, correct / total, correct, total, seconds
    )
