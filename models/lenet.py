"""The LeNet of PyTorch's "Neural Networks" tutorial (beginner/blitz/neural_networks_tutorial).

Layer names, sizes and the forward pass are the tutorial's, so that `print(net)` and the ten
parameter names and shapes match it. The only change is flattening with `torch.flatten(x, 1)`
instead of the tutorial's `num_flat_features` helper; the result is the same.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.constants import (
    INPUT_SHAPE,
    LAYER_NAMES,
    NUM_CLASSES,
    PARAMETER_NAMES,
    PARAMETER_SHAPES,
)

__all__ = [
    "INPUT_SHAPE",
    "LAYER_NAMES",
    "NUM_CLASSES",
    "PARAMETER_NAMES",
    "PARAMETER_SHAPES",
    "Net",
    "build_net",
]


class Net(nn.Module):
    """LeNet-5 variant: two 5x5 convolutions with max pooling, then three affine layers."""

    def __init__(self) -> None:
        super().__init__()
        # 1 input image channel, 6 output channels, 5x5 square convolution kernel
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        # an affine operation: y = Wx + b
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch (N, 1, 32, 32) to logits (N, 10)."""
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))  # (N, 6, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 16, 5, 5)
        x = torch.flatten(x, 1)  # (N, 400)
        x = F.relu(self.fc1(x))  # (N, 120)
        x = F.relu(self.fc2(x))  # (N, 84)
        x = self.fc3(x)  # (N, 10)
        return x


def build_net(seed: int | None = None) -> Net:
    """Build a Net on the CPU; with a seed, its weights are those of
    `torch.manual_seed(seed); Net()`, so a client can rebuild them locally."""
    if seed is None:
        return Net()
    # fork_rng keeps the caller's global RNG stream untouched by our seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Net()
