"""Numbers match PyTorch: /predict equals net(x); /train-step equals the torch.optim step."""

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import (
    GPU_TOLERANCE,
    TEST_DEVICE,
    TOLERANCE,
    exported_weights,
    image_batch,
    local_net,
)
from tests.server import LiveServer


def _check_predict(http: Any) -> None:
    net = local_net()
    images = image_batch(5)
    body = http.post("/predict", json={"inputs": images.tolist()}).json()
    with torch.no_grad():
        expected = net(torch.from_numpy(images))
    np.testing.assert_allclose(body["outputs"], expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(body["probabilities"], torch.softmax(expected, 1).numpy(), atol=1e-6)
    assert body["predictions"] == expected.argmax(1).tolist()
    assert (body["version"], body["step"]) == (0, 0)


def _check_sgd_steps(http: Any, tolerance: dict[str, float] = TOLERANCE) -> None:
    net = local_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    rng = np.random.default_rng(5)
    steps: list[tuple[str, Any, float | None]] = [
        ("cross_entropy", rng.integers(0, 10, 8).tolist(), None),
        ("mse", rng.standard_normal((8, 10)).tolist(), None),
        ("cross_entropy", rng.integers(0, 10, 8).tolist(), 0.1),
        ("mse", rng.standard_normal((8, 10)).tolist(), 0.002),
    ]
    for index, (loss_name, targets, lr) in enumerate(steps, start=1):
        images = image_batch(8, seed=index)
        request: dict[str, Any] = {"inputs": images.tolist(), "targets": targets, "loss": loss_name}
        if lr is not None:
            request["lr"] = lr
        answer = http.post("/train-step", json=request)
        assert answer.status_code == 200, answer.text

        for group in optimizer.param_groups:
            group["lr"] = lr if lr is not None else 0.01
        optimizer.zero_grad()
        outputs = net(torch.from_numpy(images))
        target_tensor = torch.tensor(targets)
        loss = (
            F.mse_loss(outputs, target_tensor.float())
            if loss_name == "mse"
            else F.cross_entropy(outputs, target_tensor)
        )
        loss.backward()
        grad_norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in net.parameters()])
        )
        optimizer.step()

        body = answer.json()
        assert body["loss"] == pytest.approx(
            loss.item(), rel=tolerance["rtol"], abs=tolerance["atol"]
        )
        assert body["grad_norm"] == pytest.approx(grad_norm.item(), rel=1e-4)
        assert (body["version"], body["step"], body["batch_size"]) == (index, index, 8)
        assert body["optimizer"]["lr"] == (lr if lr is not None else 0.01)
        served = exported_weights(http)
        for name, value in net.state_dict().items():
            torch.testing.assert_close(served[name], value, **tolerance, msg=name)
    # A per-step lr is for that step only.
    assert http.get("/optimizer").json()["lr"] == 0.01


def test_predict_equals_local_forward_in_process(client: Any) -> None:
    _check_predict(client)


def test_sgd_steps_equal_torch_optim_in_process(client: Any) -> None:
    _check_sgd_steps(client)


@pytest.mark.server
def test_predict_and_steps_match_torch_over_http(live_server: LiveServer) -> None:
    with live_server.client() as http:
        _check_predict(http)
        _check_sgd_steps(http)


def test_base64_tensor_and_nested_inputs_agree(client: Any) -> None:
    import base64

    images = image_batch(3)
    tensor = {
        "shape": list(images.shape),
        "dtype": "float32",
        "data": base64.b64encode(images.astype("<f4").tobytes()).decode(),
    }
    from_tensor = client.post("/predict", json={"tensor": tensor}).json()
    from_inputs = client.post("/predict", json={"inputs": images.tolist()}).json()
    assert from_tensor["outputs"] == from_inputs["outputs"]


@pytest.mark.parametrize("shape", [(28, 28), (3, 28, 28), (2, 1, 64, 48), (8, 8)])
def test_other_sizes_are_resized_bilinearly(client: Any, shape: tuple[int, ...]) -> None:
    images = np.random.default_rng(2).random(shape).astype(np.float32)
    body = client.post("/predict", json={"inputs": images.tolist()}).json()
    batch = torch.from_numpy(images).reshape(-1, 1, *shape[-2:])
    resized = F.interpolate(
        batch, size=(32, 32), mode="bilinear", align_corners=False, antialias=False
    )
    with torch.no_grad():
        expected = local_net()(resized)
    np.testing.assert_allclose(body["outputs"], expected.numpy(), atol=1e-5)


def test_rank_two_is_one_image_and_rank_three_a_batch(client: Any) -> None:
    image = image_batch(1)[0, 0]
    one = client.post("/predict", json={"inputs": image.tolist()}).json()
    batch = client.post("/predict", json={"inputs": [image.tolist(), image.tolist()]}).json()
    assert len(one["outputs"]) == 1 and len(batch["outputs"]) == 2
    np.testing.assert_allclose(batch["outputs"][1], one["outputs"][0], atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_twin_predict_and_step_match_cpu(make_client: Any) -> None:
    """The same parity checks on CUDA: within 1e-4 of the CPU's (TF32 is off)."""
    gpu = make_client(device="cuda")
    assert gpu.get("/model").json()["device"].startswith("cuda")
    _check_predict(gpu)
    _check_sgd_steps(gpu, GPU_TOLERANCE)


def test_device_in_use_is_reported(client: Any) -> None:
    assert client.get("/model").json()["device"].startswith(TEST_DEVICE.split(":")[0])
