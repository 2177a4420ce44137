"""The arithmetic of a training step, as pure functions of the model and optimizer they are
given: building the `torch.optim` optimizer a configuration names, the forward pass with its
loss, and an optimizer step with a one-step learning rate. `app.engine` owns the objects and
calls these on its torch thread."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from app.optimizers import OptimizerConfig
from app.schemas import LossName

_OPTIMIZER_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
}


def build_optimizer(
    config: OptimizerConfig, parameters: list[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """The `torch.optim` optimizer that `config` names, over `parameters`, with a fresh state."""
    hyper_parameters: dict[str, Any] = config.model_dump(exclude={"name"})
    return _OPTIMIZER_CLASSES[config.name](parameters, **hyper_parameters)


def forward_loss(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    loss_name: LossName,
    device: torch.device,
) -> torch.Tensor:
    """The loss of `model` on `images` against `targets` (class indices or target vectors)."""
    outputs = model(images.to(device))
    targets = targets.to(device)
    if loss_name == "mse":
        return F.mse_loss(outputs, targets)
    return F.cross_entropy(outputs, targets)


@contextmanager
def learning_rate(optimizer: torch.optim.Optimizer, lr: float | None) -> Iterator[None]:
    """Within the block, every parameter group uses `lr` (when given); restored afterwards."""
    saved = [group["lr"] for group in optimizer.param_groups]
    try:
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
        yield
    finally:
        for group, saved_lr in zip(optimizer.param_groups, saved, strict=True):
            group["lr"] = saved_lr
