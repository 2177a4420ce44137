"""app.inspection on its own: the autograd graph walk, tensor statistics in float64, the global
norm, the model's description and /explain's arithmetic, each against torch computed here."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.inspection import autograd_graph, describe_model, explain, global_norm, tensor_stats
from models.lenet import PARAMETER_NAMES, Net
from tests.conftest import image_batch, local_explanation, local_net

IMAGE = torch.from_numpy(image_batch(1))


def test_autograd_graph_is_the_whole_grad_fn_walk() -> None:
    net = local_net()
    loss = F.mse_loss(net(IMAGE), torch.arange(1, 11.0).view(1, -1))
    graph = autograd_graph(loss, dict(net.named_parameters()))
    nodes = {node["id"]: node for node in graph["nodes"]}
    assert graph["root"] == 0 and sorted(nodes) == list(range(len(nodes)))
    assert [graph["nodes"][i]["name"] for i in (0, 1)] == ["MseLossBackward0", "AddmmBackward0"]
    assert nodes[0]["next"] == [1]
    accumulators = [node for node in graph["nodes"] if node["name"] == "AccumulateGrad"]
    assert sorted(node["param"] for node in accumulators) == sorted(PARAMETER_NAMES)
    assert all("param" not in node for node in graph["nodes"] if node["name"] != "AccumulateGrad")
    # The same set of functions as a walk of `next_functions` done here.
    seen, frontier = {loss.grad_fn}, [loss.grad_fn]
    while frontier:
        for fn, _ in frontier.pop().next_functions:
            if fn is not None and fn not in seen:
                seen.add(fn)
                frontier.append(fn)
    assert sorted(type(fn).__name__ for fn in seen) == sorted(n["name"] for n in graph["nodes"])
    # Every edge points at a node in the list, and every node is reachable from the root.
    reachable, stack = {0}, [0]
    while stack:
        for nxt in nodes[stack.pop()]["next"]:
            assert nxt in nodes
            if nxt not in reachable:
                reachable.add(nxt)
                stack.append(nxt)
    assert reachable == set(nodes)


def test_autograd_graph_of_cross_entropy() -> None:
    net = local_net()
    loss = F.cross_entropy(net(IMAGE), torch.tensor([3]))
    graph = autograd_graph(loss, dict(net.named_parameters()))
    assert graph["nodes"][0]["name"] == "NllLossBackward0"
    assert graph["nodes"][1]["name"] == "LogSoftmaxBackward0"


def test_tensor_stats_match_torch() -> None:
    tensor = local_net().conv1.weight.detach()
    stats = tensor_stats(tensor)
    assert list(stats) == ["mean", "std", "min", "max", "norm"]
    assert all(type(value) is float for value in stats.values())
    wide = tensor.double()
    assert stats["mean"] == pytest.approx(wide.mean().item(), rel=1e-12)
    assert stats["std"] == pytest.approx(torch.std(wide).item(), rel=1e-12)  # unbiased
    assert stats["std"] == pytest.approx(torch.std(tensor).item(), rel=1e-5)
    assert (stats["min"], stats["max"]) == (tensor.min().item(), tensor.max().item())
    assert stats["norm"] == pytest.approx(tensor.norm().item(), rel=1e-5)


def test_tensor_stats_are_finite_for_finite_values_near_float32_overflow() -> None:
    big = torch.full((120, 400), 3.0e38, dtype=torch.float32)
    big[0, 0] = -3.0e38
    assert not math.isfinite(big.norm().item())  # float32 itself overflows here
    stats = tensor_stats(big)
    assert all(math.isfinite(value) for value in stats.values()), stats
    wide = big.double()
    assert stats["norm"] == pytest.approx(wide.norm().item(), rel=1e-12)
    assert stats["mean"] == pytest.approx(wide.mean().item(), rel=1e-12)
    assert stats["std"] == pytest.approx(wide.std().item(), rel=1e-12)


def test_global_norm_is_clip_grad_norms_and_finite_near_overflow() -> None:
    net = local_net()
    F.cross_entropy(net(torch.from_numpy(image_batch(4))), torch.tensor([1, 2, 3, 4])).backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    expected = torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=math.inf)
    assert global_norm(grads) == pytest.approx(expected.item(), rel=1e-6)
    assert global_norm([]) == 0.0
    huge = [torch.full((1000,), 3.0e38), torch.full((10,), -3.0e38)]
    assert global_norm(huge) == pytest.approx(math.sqrt(1010) * 3.0e38, rel=1e-6)
    assert not math.isfinite(global_norm([torch.tensor([math.inf])]))


def test_describe_model() -> None:
    net = local_net()
    description = describe_model(net, torch.device("cpu"))
    assert description["repr"] == repr(Net())
    assert description["layers"] == [
        {"name": "conv1", "type": "Conv2d", "output_shape": [6, 28, 28], "params": 156},
        {"name": "conv2", "type": "Conv2d", "output_shape": [16, 10, 10], "params": 2416},
        {"name": "fc1", "type": "Linear", "output_shape": [120], "params": 48120},
        {"name": "fc2", "type": "Linear", "output_shape": [84], "params": 10164},
        {"name": "fc3", "type": "Linear", "output_shape": [10], "params": 850},
    ]
    assert description["input_shape"] == [1, 32, 32] and description["num_classes"] == 10
    assert description["parameters"] == 61706 == sum(p.numel() for p in net.parameters())
    assert (description["device"], description["dtype"]) == ("cpu", "float32")
    # The hooks are gone afterwards.
    assert all(not getattr(net, name)._forward_hooks for name in ("conv1", "fc3"))


@pytest.mark.parametrize("target", [None, 0, 7])
def test_explain_equals_a_local_computation(target: int | None) -> None:
    net = local_net()
    answer = explain(net, IMAGE, target)
    expected_answer = local_explanation(net, IMAGE, target)
    prediction, chosen = expected_answer["prediction"], expected_answer["target"]
    saliency = torch.from_numpy(expected_answer["saliency"])
    fc3 = torch.from_numpy(expected_answer["outputs"])[None]
    assert (answer["prediction"], answer["target"]) == (prediction, chosen)
    expected = {k: torch.from_numpy(v)[None] for k, v in expected_answer["activations"].items()}
    assert list(answer["activations"]) == list(expected)
    for name, tensor in expected.items():
        np.testing.assert_allclose(
            answer["activations"][name], tensor.detach()[0].numpy(), atol=1e-6, err_msg=name
        )
    np.testing.assert_allclose(answer["outputs"], fc3.detach()[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(
        answer["probabilities"], torch.softmax(fc3.detach()[0], 0).numpy(), atol=1e-6
    )
    np.testing.assert_allclose(answer["saliency"], saliency.numpy(), atol=1e-6)
    assert np.asarray(answer["saliency"]).shape == (32, 32)
    assert all(p.grad is None for p in net.parameters())  # the parameters' .grad untouched
