"""Optimizer configurations: what `GET/PUT /optimizer` show and take, torch-free.

Defaults are `torch.optim`'s own, so a field left out means exactly what it means to PyTorch.
This module is the one source of the optimizers' names, defaults and the recommended settings
that the `lenet train` client and the web page start from (served by `GET /optimizers`); it
imports no torch so that the client can read it. `app.engine` builds the `torch.optim` object.
"""

from typing import Annotated, Any, Literal, get_args

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

OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop"]
OPTIMIZER_NAMES: tuple[OptimizerName, ...] = get_args(OptimizerName)
CONFIG_CLASSES: dict[str, type[_OptimizerConfig]] = {
    config.model_fields["name"].default: config
    for config in (SGDConfig, AdamConfig, AdamWConfig, RMSpropConfig)
}

# Settings that train LeNet well on scikit-learn's digits, measured (see the README): the
# `lenet train` client's defaults for each optimizer, and the web page's presets. A preset is a
# flat PUT /optimizer body; fields left out take torch's defaults.
TRAIN_CLIENT_DEFAULTS: dict[OptimizerName, dict[str, Any]] = {
    "sgd": {"name": "sgd", "lr": 0.03, "momentum": 0.9},
    "adam": {"name": "adam", "lr": 1e-3},
    "adamw": {"name": "adamw", "lr": 1e-3},
    "rmsprop": {"name": "rmsprop", "lr": 1e-3, "momentum": 0.0},
}
# Adam at 0.001 gets the page's held-out accuracy past 80% within about a hundred steps of 32
# images; the tutorial's plain SGD at 0.01 barely moves in that time.
PAGE_PRESETS: dict[str, dict[str, Any]] = {
    "adam": {"name": "adam", "lr": 0.001},
    "sgd-momentum": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "sgd": {"name": "sgd", "lr": 0.01},
}


def torch_defaults(name: OptimizerName) -> dict[str, Any]:
    """The hyper-parameters `torch.optim` uses for `name` when none is given."""
    return CONFIG_CLASSES[name]().model_dump()


def catalogue() -> dict[str, Any]:
    """GET /optimizers: each optimizer's torch defaults, the client's defaults, the presets."""
    return {
        "optimizers": [
            {"name": name, "defaults": torch_defaults(name), "train": TRAIN_CLIENT_DEFAULTS[name]}
            for name in OPTIMIZER_NAMES
        ],
        "presets": PAGE_PRESETS,
    }
