"""What the network looks like from outside: the autograd graph behind a loss, each parameter's
statistics, and the description of the model. Pure functions of the tensors and modules they are
given; the engine calls them on its torch thread and owns everything they read.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from app.device import device_facts
from models.lenet import INPUT_SHAPE, LAYER_NAMES, NUM_CLASSES, Net

STAT_NAMES = ("mean", "std", "min", "max", "norm")


def autograd_graph(loss: torch.Tensor, parameters: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The whole `loss.grad_fn.next_functions` walk, breadth first, as nodes with ids; a node
    that accumulates into a parameter names it."""
    names = {id(p): name for name, p in parameters.items()}
    root = loss.grad_fn
    assert root is not None, "a loss computed with grad enabled has a grad_fn"
    ids: dict[Any, int] = {root: 0}
    order = [root]
    for fn in order:  # `order` grows while we walk it
        for next_fn, _ in fn.next_functions:
            if next_fn is not None and next_fn not in ids:
                ids[next_fn] = len(order)
                order.append(next_fn)
    nodes = []
    for fn in order:
        node: dict[str, Any] = {
            "id": ids[fn],
            "name": type(fn).__name__,
            "next": [ids[n] for n, _ in fn.next_functions if n is not None],
        }
        variable = getattr(fn, "variable", None)
        if variable is not None:
            node["param"] = names.get(id(variable))
        nodes.append(node)
    return {"root": 0, "nodes": nodes}


def tensor_stats(tensor: torch.Tensor) -> dict[str, float]:
    """mean, std (unbiased, as torch.std), min, max and L2 norm, computed in float64 so that a
    norm or a mean of finite float32 values never overflows."""
    wide = tensor.detach().to(torch.float64)
    numbers = torch.stack([wide.mean(), wide.std(), wide.min(), wide.max(), wide.norm()]).tolist()
    return dict(zip(STAT_NAMES, numbers, strict=True))


def global_norm(tensors: Sequence[torch.Tensor]) -> float:
    """The L2 norm of all `tensors` together (as `clip_grad_norm_` computes it, before any
    clipping), in float64: finite whenever every element is."""
    if not tensors:
        return 0.0
    norms = torch._foreach_norm([t.detach().to(torch.float64) for t in tensors])
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def parameters_report(
    parameters: Mapping[str, torch.nn.Parameter], names: Sequence[str], values: bool, grads: bool
) -> list[dict[str, Any]]:
    """GET /params entries for `names` (in order, repeats dropped)."""
    entries = []
    with torch.no_grad():
        for name in dict.fromkeys(names):
            parameter = parameters[name]
            gradient = parameter.grad
            entries.append(
                {
                    "name": name,
                    "shape": list(parameter.shape),
                    "numel": parameter.numel(),
                    "stats": tensor_stats(parameter),
                    "grad_stats": tensor_stats(gradient) if gradient is not None else None,
                    "values": parameter.cpu().numpy() if values else None,
                    "grad": gradient.cpu().numpy() if grads and gradient is not None else None,
                }
            )
    return entries


def describe_model(
    model: torch.nn.Module, device: torch.device, inference_dtype: str = "float32"
) -> dict[str, Any]:
    """GET /model without the counters: `print(net)`, each layer's output shape for one image,
    and what computes it (torch, CUDA, the device's name)."""
    shapes: dict[str, list[int]] = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda _module, _inputs, output, name=name: shapes.__setitem__(
                name, list(output.shape[1:])
            )
        )
        for name in LAYER_NAMES
    ]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *INPUT_SHAPE, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    layers = [
        {
            "name": name,
            "type": type(getattr(model, name)).__name__,
            "output_shape": shapes[name],
            "params": sum(p.numel() for p in getattr(model, name).parameters()),
        }
        for name in LAYER_NAMES
    ]
    return {
        "repr": repr(model),
        "layers": layers,
        "input_shape": list(INPUT_SHAPE),
        "num_classes": NUM_CLASSES,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "dtype": "float32",
        "inference_dtype": inference_dtype,
        **device_facts(device),
    }


def explain(model: Net, image: torch.Tensor, target: int | None) -> dict[str, Any]:
    """POST /explain for one image (1, 1, 32, 32) on the model's device: every layer's output
    along the tutorial's forward, and the saliency `d fc3[target] / d x` (target: the predicted
    class when None). `torch.autograd.grad` with the image as its only input leaves the
    parameters' `.grad` as they were."""
    x = image.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        conv1 = F.relu(model.conv1(x))  # (1, 6, 28, 28)
        pool1 = F.max_pool2d(conv1, (2, 2))  # (1, 6, 14, 14)
        conv2 = F.relu(model.conv2(pool1))  # (1, 16, 10, 10)
        pool2 = F.max_pool2d(conv2, 2)  # (1, 16, 5, 5)
        fc1 = F.relu(model.fc1(torch.flatten(pool2, 1)))  # (1, 120)
        fc2 = F.relu(model.fc2(fc1))  # (1, 84)
        fc3 = model.fc3(fc2)  # (1, 10)
        prediction = int(torch.argmax(fc3, dim=1))
        chosen = prediction if target is None else target
        (saliency,) = torch.autograd.grad(fc3[0, chosen], x)
    layers = {"conv1": conv1, "pool1": pool1, "conv2": conv2, "pool2": pool2}
    layers.update(fc1=fc1, fc2=fc2, fc3=fc3)
    activations = {name: tensor.detach()[0].cpu().tolist() for name, tensor in layers.items()}
    return {
        "prediction": prediction,
        "target": chosen,
        "outputs": activations["fc3"],
        "probabilities": torch.softmax(fc3.detach()[0], dim=0).cpu().tolist(),
        "activations": activations,
        "saliency": saliency[0, 0].cpu().tolist(),
    }
