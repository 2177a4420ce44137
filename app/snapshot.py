"""One rollback for every change the engine may have to undo.

`TrainingSnapshot.capture` takes what a training step, a restore or an import can change: the
weights' values, the gradient tensors, the optimizer object with a copy of its state, and the
counters. `restore` puts all of it back, so a refused or failed change leaves the service exactly
as it was. Used by `app.engine` alone, on its torch thread.
"""

import copy
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Counters:
    """The numbers that travel with the weights."""

    version: int
    step: int
    weights_finite: bool


def _copy_optimizer_state(optimizer: torch.optim.Optimizer) -> defaultdict[Any, dict[str, Any]]:
    return defaultdict(
        dict,
        {
            parameter: {
                key: value.clone() if isinstance(value, torch.Tensor) else copy.copy(value)
                for key, value in state.items()
            }
            for parameter, state in optimizer.state.items()
        },
    )


@dataclass(frozen=True)
class TrainingSnapshot:
    """Weights, gradients, optimizer (object and state, learning rates) and counters."""

    weights: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor | None]
    optimizer: torch.optim.Optimizer
    optimizer_state: defaultdict[Any, dict[str, Any]]
    learning_rates: list[float]
    counters: Counters

    @classmethod
    def capture(
        cls,
        parameters: Mapping[str, torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        counters: Counters,
    ) -> "TrainingSnapshot":
        """Copy everything a change may touch (gradients too: a backward pass without zero_grad
        adds into them in place). LeNet's state is a few hundred KiB: the copy costs far less
        than the step it guards."""
        return cls(
            weights={name: p.detach().clone() for name, p in parameters.items()},
            gradients={
                name: None if p.grad is None else p.grad.clone() for name, p in parameters.items()
            },
            optimizer=optimizer,
            optimizer_state=_copy_optimizer_state(optimizer),
            learning_rates=[group["lr"] for group in optimizer.param_groups],
            counters=counters,
        )

    def restore(self, parameters: Mapping[str, torch.nn.Parameter]) -> None:
        """Put the weights, gradients and optimizer state back (the caller resets its optimizer
        reference and counters from this snapshot)."""
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(self.weights[name])
                parameter.grad = self.gradients[name]
        self.optimizer.state = self.optimizer_state
        for group, lr in zip(self.optimizer.param_groups, self.learning_rates, strict=True):
            group["lr"] = lr
