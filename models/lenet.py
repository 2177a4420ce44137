"""The LeNet of PyTorch's "Neural Networks" tutorial (beginner/blitz/neural_networks_tutorial).

Layer names, sizes and the forward pass are the tutorial's, so that `print(net)` and the ten
parameter names and shapes match it. The only change is flattening with `torch.flatten(x, 1)`
instead of the tutorial's `num_flat_features` helper; the result is the same.

Beside it, `inference_forward` is the same forward pass, value for value, with a pooling that is
faster on the CPU: what the service predicts with. Training runs the module itself.
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
    "inference_forward",
    "max_pool_2x2",
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


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """`F.max_pool2d(x, 2)` to the bit (a max returns one of its inputs; NaN propagates in
    both), as the elementwise maximum of each 2x2 window's four strided views. On the CPU,
    torch's max_pool2d kernel for NCHW tensors is scalar code and took two thirds of a
    256-image forward pass; this is 6-9x faster (0.54 against 4.70 ms for (256, 6, 28, 28),
    0.21 against 1.64 ms for (256, 16, 10, 10), on the 2-core machine). For inference only:
    its gradient would split between tied inputs what max_pool2d gives to one, so training
    runs the module's own forward."""
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]  # floor, as max_pool2d does
    top = torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2])
    bottom = torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2])
    return torch.maximum(top, bottom)


def inference_forward(net: Net, x: torch.Tensor) -> torch.Tensor:
    """`net(x)` as predictions compute it: the same layers and the same values, with
    `max_pool_2x2` for the pooling."""
    x = max_pool_2x2(F.relu(net.conv1(x)))
    x = max_pool_2x2(F.relu(net.conv2(x)))
    x = torch.flatten(x, 1)
    x = F.relu(net.fc1(x))
    x = F.relu(net.fc2(x))
    logits: torch.Tensor = net.fc3(x)
    return logits


def build_net(seed: int | None = None) -> Net:
    """Build a Net on the CPU; with a seed, its weights are those of
    `torch.manual_seed(seed); Net()`, so a client can rebuild them locally."""
    if seed is None:
        return Net()
    # fork_rng keeps the caller's global RNG stream untouched by our seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Net()
