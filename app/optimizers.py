"""Optimizer configurations: what `GET/PUT /optimizer` show and take, and how each becomes the
`torch.optim` optimizer it names. Defaults are `torch.optim`'s own, so a field left out means
exactly what it means to PyTorch."""

from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveLr = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Beta = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
Epsilon = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _OptimizerConfig(BaseModel):
    # strict: no "0.1" strings or true-as-1; forbid: a misspelt field is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SGDConfig(_OptimizerConfig):
    """torch.optim.SGD, with momentum and Nesterov momentum."""

    name: Literal["sgd"] = "sgd"
    lr: PositiveLr = 1e-3
    momentum: NonNegative = 0.0
    dampening: NonNegative = 0.0
    weight_decay: NonNegative = 0.0
    nesterov: bool = False

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "SGDConfig":
        # torch.optim.SGD raises for this combination; say so before touching anything.
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov requires momentum > 0 and dampening = 0")
        return self


class AdamConfig(_OptimizerConfig):
    """torch.optim.Adam."""

    name: Literal["adam"] = "adam"
    lr: PositiveLr = 1e-3
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: Epsilon = 1e-8
    weight_decay: NonNegative = 0.0
    amsgrad: bool = False


class AdamWConfig(_OptimizerConfig):
    """torch.optim.AdamW (decoupled weight decay)."""

    name: Literal["adamw"] = "adamw"
    lr: PositiveLr = 1e-3
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: Epsilon = 1e-8
    weight_decay: NonNegative = 1e-2
    amsgrad: bool = False


class RMSpropConfig(_OptimizerConfig):
    """torch.optim.RMSprop."""

    name: Literal["rmsprop"] = "rmsprop"
    lr: PositiveLr = 1e-2
    alpha: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.99
    eps: Epsilon = 1e-8
    weight_decay: NonNegative = 0.0
    momentum: NonNegative = 0.0
    centered: bool = False


OptimizerConfig = Annotated[
    SGDConfig | AdamConfig | AdamWConfig | RMSpropConfig, Field(discriminator="name")
]
optimizer_config_adapter: TypeAdapter[OptimizerConfig] = TypeAdapter(OptimizerConfig)

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
