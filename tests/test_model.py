"""models/lenet.py is the tutorial's network: same modules, parameters and outputs."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.lenet import PARAMETER_NAMES, Net, build_net, inference_forward, max_pool_2x2


class TutorialNet(nn.Module):
    """The network exactly as the tutorial writes it (num_flat_features and all)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, self.num_flat_features(x))
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

    def num_flat_features(self, x: torch.Tensor) -> int:
        num_features = 1
        for s in x.size()[1:]:
            num_features *= s
        return num_features


def test_print_matches_the_tutorial_network() -> None:
    assert repr(Net()).replace("Net(", "") == repr(TutorialNet()).replace("TutorialNet(", "")
    assert repr(Net()).startswith("Net(\n  (conv1): Conv2d(1, 6, kernel_size=(5, 5)")


def test_ten_parameters_with_the_tutorial_shapes() -> None:
    params = list(Net().parameters())
    assert len(params) == 10
    assert params[0].size() == torch.Size([6, 1, 5, 5])
    assert tuple(name for name, _ in Net().named_parameters()) == PARAMETER_NAMES
    assert sum(p.numel() for p in params) == 61706


def test_forward_equals_the_tutorial_forward() -> None:
    ours, theirs = build_net(3), TutorialNet()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 1, 32, 32)
    out = ours(x)
    assert out.shape == (4, 10)
    torch.testing.assert_close(out, theirs(x), rtol=0, atol=0)


def test_seeded_build_is_manual_seed_then_net_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    seeded = build_net(7)
    assert torch.equal(torch.rand(1), expected_next)
    torch.manual_seed(7)
    reference = Net()
    for (name, a), (_, b) in zip(
        seeded.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_max_pool_2x2_is_max_pool2d_to_the_bit() -> None:
    """Ties (ReLU's zeros), NaN, negative zero and odd sizes (the last row and column
    dropped, as max_pool2d floors) included; a NaN may come out with another payload."""
    generator = torch.Generator().manual_seed(3)
    for shape in [(5, 6, 28, 28), (2, 16, 10, 10), (1, 3, 7, 9), (4, 1, 2, 2)]:
        x = F.relu(torch.randn(*shape, generator=generator))
        x[0, 0, 0, 0] = float("nan")
        x[-1, -1, -1, -1] = -0.0
        expected = F.max_pool2d(x, 2)
        actual = max_pool_2x2(x)
        assert actual.shape == expected.shape
        nan = expected.isnan()
        assert nan.any() and torch.equal(actual.isnan(), nan), shape  # NaN where max_pool2d's
        numbers, expected_numbers = actual[~nan].numpy(), expected[~nan].numpy()
        assert numbers.tobytes() == expected_numbers.tobytes(), shape  # the rest to the bit


def test_inference_forward_is_net_x_to_the_bit() -> None:
    """What predictions compute is `net(x)`, bit for bit, with either convolution backend."""
    net = build_net(4)
    generator = torch.Generator().manual_seed(5)
    for onednn in (True, False):
        torch.backends.mkldnn.enabled = onednn  # type: ignore[assignment]
        try:
            for batch in (1, 3, 8, 17, 256):
                x = torch.rand(batch, 1, 32, 32, generator=generator)
                x[0] = 0  # a blank image: all-zero windows, ties everywhere
                with torch.inference_mode():
                    expected, actual = net(x), inference_forward(net, x)
                assert actual.numpy().tobytes() == expected.numpy().tobytes(), (onednn, batch)
        finally:
            torch.backends.mkldnn.enabled = True  # type: ignore[assignment]
