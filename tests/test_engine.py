"""app.engine and app.snapshot on their own: the Engine driven directly with asyncio, no HTTP.

The guard refuses a step whose loss, gradients or weights are not finite, and the rollback puts
back exactly what was there: weights, gradients, the optimizer's state and learning rate, the
version and the step."""

import asyncio
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch

from app.engine import Engine
from app.errors import Conflict, InvalidInput, NonFiniteStep, NotReady
from app.optimizers import AdamConfig, SGDConfig
from app.settings import Settings
from app.snapshot import Counters, TrainingSnapshot
from tests.conftest import image_batch, local_net

T = TypeVar("T")
SettingsFactory = Callable[..., Settings]

IMAGES = torch.from_numpy(image_batch(4))
INDICES = torch.tensor([1, 2, 3, 4])
# Finite float32 pixels whose loss overflows to NaN.
OVERFLOWING = torch.from_numpy(np.where(image_batch(4) > 0, 3.4e38, -3.4e38).astype(np.float32))


def with_engine(settings: Settings, body: Callable[[Engine], Awaitable[T]]) -> T:
    """Start an engine on `settings`, run `body` on it in an event loop, close it."""

    async def main() -> T:
        engine = Engine(settings)
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.close()

    return asyncio.run(main())


def clone_state(value: Any) -> Any:
    """A deep copy of an optimizer state dict (tensors cloned)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: clone_state(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(clone_state(item) for item in value)
    return value


def assert_equal_state(a: Any, b: Any, where: str = "") -> None:
    """Exact equality of nested state: tensors bit for bit, everything else by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_equal_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal_state(x, y, f"{where}[{index}]")
    else:
        assert a == b, (where, a, b)


def engine_state(engine: Engine) -> dict[str, Any]:
    """Everything a refused change must leave as it was."""
    return {
        "weights": {n: p.detach().clone() for n, p in engine.model.named_parameters()},
        "grads": {
            n: None if p.grad is None else p.grad.clone()
            for n, p in engine.model.named_parameters()
        },
        "optimizer": clone_state(engine.optimizer.state_dict()),
        "lr": [group["lr"] for group in engine.optimizer.param_groups],
        "config": engine.optimizer_public(),
        "counters": (engine.version, engine.step, engine.weights_finite),
    }


# ----------------------------------------------------------------- life cycle


def test_not_ready_before_start_and_after_close(make_settings: SettingsFactory) -> None:
    async def main() -> None:
        engine = Engine(make_settings())
        assert not engine.ready
        with pytest.raises(NotReady, match="starting or shutting down"):
            await engine.predict(torch.zeros(1, 1, 32, 32))
        await engine.start()
        assert engine.ready
        assert (await engine.predict(torch.zeros(1, 1, 32, 32))).logits.shape == (1, 10)
        await engine.close()
        with pytest.raises(NotReady):
            await engine.predict(torch.zeros(1, 1, 32, 32))

    asyncio.run(main())


def test_predictions_are_the_seeded_networks(make_settings: SettingsFactory) -> None:
    async def body(engine: Engine) -> None:
        prediction = await engine.predict(IMAGES)
        with torch.no_grad():
            expected = local_net()(IMAGES).numpy()
        np.testing.assert_allclose(prediction.logits, expected, atol=1e-5)
        assert (prediction.version, prediction.step) == (0, 0)
        np.testing.assert_array_equal(prediction.predictions, prediction.logits.argmax(axis=1))
        # A 28x28 image is resized first, never refused.
        assert (await engine.predict(torch.zeros(2, 1, 28, 28))).logits.shape == (2, 10)

    with_engine(make_settings(), body)


def test_an_input_whose_outputs_overflow_is_invalid_input(make_settings: SettingsFactory) -> None:
    async def body(engine: Engine) -> None:
        with pytest.raises(InvalidInput, match="outputs are not finite"):
            await engine.predict(OVERFLOWING[:1])
        assert (await engine.predict(IMAGES[:1])).logits.shape == (1, 10)

    with_engine(make_settings(), body)


# ----------------------------------------------------------------- the guard


@pytest.mark.parametrize("optimizer", [SGDConfig(lr=0.05, momentum=0.9), AdamConfig(lr=0.001)])
def test_a_non_finite_loss_is_refused_and_everything_restored(
    make_settings: SettingsFactory, optimizer: Any
) -> None:
    async def body(engine: Engine) -> None:
        await engine.set_optimizer(optimizer)
        await engine.train_step(IMAGES, INDICES, "cross_entropy", None)  # optimizer state now
        before = engine_state(engine)
        with pytest.raises(NonFiniteStep, match="the loss is not finite"):
            await engine.train_step(OVERFLOWING, INDICES, "cross_entropy", 0.5)
        assert_equal_state(engine_state(engine), before)
        assert engine.steps_refused == 1

    with_engine(make_settings(), body)


def test_non_finite_weights_are_refused_and_everything_restored(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """lr 1e38 on finite gradients overflows the weights: the step is undone, momentum too,
    and the next good step is the one a never-refused engine takes."""
    vectors = torch.full((4, 10), 100.0)

    async def steps(engine: Engine, refuse: bool) -> dict[str, Any]:
        await engine.set_optimizer(SGDConfig(lr=0.05, momentum=0.9))
        await engine.train_step(IMAGES, INDICES, "cross_entropy", None)
        if refuse:
            before = engine_state(engine)
            with pytest.raises(NonFiniteStep, match="weights non-finite"):
                await engine.train_step(IMAGES, vectors, "mse", 1e38)
            assert_equal_state(engine_state(engine), before)
            assert engine.steps_refused == 1
            assert engine.weights_finite
        answer = await engine.train_step(IMAGES, INDICES, "cross_entropy", None)
        assert (answer.version, answer.step) == (2, 2)
        return engine_state(engine)

    # Two engines, each with a folder of its own (versions are reserved per folder).
    refused = with_engine(
        make_settings(max_lr=1e38, checkpoint_dir=tmp_path / "refused"),
        lambda engine: steps(engine, refuse=True),
    )
    reference = with_engine(
        make_settings(max_lr=1e38, checkpoint_dir=tmp_path / "reference"),
        lambda engine: steps(engine, refuse=False),
    )
    assert_equal_state(refused, reference)


def test_non_finite_gradients_of_a_step_are_refused(make_settings: SettingsFactory) -> None:
    async def body(engine: Engine) -> None:
        await engine.set_optimizer(AdamConfig(lr=0.001))
        await engine.train_step(IMAGES, INDICES, "cross_entropy", None)
        # The gradients `POST /step` would use, poisoned in place where the model holds them.
        fc3_bias = engine.model.fc3.bias
        assert fc3_bias.grad is not None
        fc3_bias.grad[0] = math.inf
        before = engine_state(engine)
        with pytest.raises(NonFiniteStep, match="the gradients are not finite"):
            await engine.step_with_gradients(None)
        assert_equal_state(engine_state(engine), before)
        assert engine.steps_refused == 1

    with_engine(make_settings(), body)


@pytest.mark.parametrize("zero_grad", [True, False])
def test_a_backward_pass_with_non_finite_gradients_is_undone(
    make_settings: SettingsFactory, zero_grad: bool
) -> None:
    """Two images' gradients of 3.4e38 sum to infinity in fc3.bias; the gradients already there
    (added to in place when not zero_grad) come back exactly. Not a step: nothing is counted."""

    async def body(engine: Engine) -> None:
        await engine.loss(IMAGES, INDICES, "cross_entropy", backward=True, graph=False)
        before = engine_state(engine)
        assert all(grad is not None for grad in before["grads"].values())
        with pytest.raises(NonFiniteStep, match="the gradients are not finite"):
            await engine.backward(IMAGES[:2], torch.full((2, 10), 3.4e38), zero_grad)
        assert_equal_state(engine_state(engine), before)
        assert engine.steps_refused == 0

    with_engine(make_settings(), body)


def test_steps_refused_counts_refused_steps_only(make_settings: SettingsFactory) -> None:
    async def body(engine: Engine) -> None:
        for _ in range(2):
            with pytest.raises(NonFiniteStep):
                await engine.train_step(OVERFLOWING, INDICES, "cross_entropy", None)
        assert engine.steps_refused == 2
        with pytest.raises(NonFiniteStep):  # /loss refuses too, but takes no step
            await engine.loss(OVERFLOWING, INDICES, "cross_entropy", backward=True, graph=False)
        with pytest.raises(InvalidInput, match="LENET_MAX_LR"):  # refused before any step
            await engine.train_step(IMAGES, INDICES, "cross_entropy", 11.0)
        await engine.train_step(IMAGES, INDICES, "cross_entropy", None)
        assert engine.steps_refused == 2
        assert (engine.version, engine.step) == (1, 1)

    with_engine(make_settings(), body)


def test_a_step_without_gradients_is_a_conflict(make_settings: SettingsFactory) -> None:
    async def body(engine: Engine) -> None:
        before = engine_state(engine)
        with pytest.raises(Conflict, match='POST /loss with "backward": true') as caught:
            await engine.step_with_gradients(None)
        assert caught.value.status_code == 409 and "POST /backward" in caught.value.detail
        assert_equal_state(engine_state(engine), before)
        assert engine.steps_refused == 0
        await engine.loss(IMAGES, INDICES, "cross_entropy", backward=True, graph=False)
        await engine.zero_grad()
        with pytest.raises(Conflict):
            await engine.step_with_gradients(None)

    with_engine(make_settings(), body)


@pytest.mark.parametrize("lr", [0.0, -1e-9, 10.000001, math.inf, math.nan])
def test_check_lr_refuses_outside_the_bound(make_settings: SettingsFactory, lr: float) -> None:
    engine = Engine(make_settings())
    engine.check_lr(None)
    engine.check_lr(10.0)
    engine.check_lr(1e-12)
    with pytest.raises(InvalidInput, match=r"<= LENET_MAX_LR \(10.0\)"):
        engine.check_lr(lr)


def test_a_step_with_lr_keeps_the_configured_lr(make_settings: SettingsFactory) -> None:
    async def body(engine: Engine) -> None:
        answer = await engine.train_step(IMAGES, INDICES, "cross_entropy", 0.5)
        assert answer.optimizer["lr"] == 0.5
        assert [group["lr"] for group in engine.optimizer.param_groups] == [0.01]
        assert engine.optimizer_public()["lr"] == 0.01

    with_engine(make_settings(), body)


# ----------------------------------------------------------------- the snapshot alone


def test_snapshot_round_trip_with_adam_state_and_lr() -> None:
    net = local_net()
    parameters = dict(net.named_parameters())
    optimizer = torch.optim.Adam(net.parameters(), lr=0.003)
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(IMAGES), INDICES).backward()
        optimizer.step()
    net.fc3.bias.grad = None  # a gradient that is None must come back as None
    weights = {n: p.detach().clone() for n, p in parameters.items()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in parameters.items()}
    state = clone_state(optimizer.state_dict())
    counters = Counters(version=5, step=2, weights_finite=True)

    snapshot = TrainingSnapshot.capture(parameters, optimizer, counters)
    # Change everything: another step at another lr, gradients added to in place.
    optimizer.param_groups[0]["lr"] = 0.5
    torch.nn.functional.cross_entropy(net(IMAGES * 2), INDICES).backward()
    optimizer.step()
    assert not torch.equal(parameters["conv1.weight"], weights["conv1.weight"])

    snapshot.restore(parameters)
    assert snapshot.counters == counters and snapshot.optimizer is optimizer
    assert optimizer.param_groups[0]["lr"] == 0.003
    for name, parameter in parameters.items():
        assert torch.equal(parameter.detach(), weights[name]), name
        expected = grads[name]
        if expected is None:
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and torch.equal(parameter.grad, expected), name
    assert_equal_state(optimizer.state_dict(), state)
    # The restored optimizer takes the very step an untouched one takes.
    twin = local_net()
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=0.003)
    for _ in range(3):
        twin_optimizer.zero_grad()
        torch.nn.functional.cross_entropy(twin(IMAGES), INDICES).backward()
        twin_optimizer.step()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(net(IMAGES), INDICES).backward()
    optimizer.step()
    for (name, a), b in zip(net.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_snapshot_of_a_fresh_optimizer_restores_an_empty_state() -> None:
    net = local_net()
    parameters = dict(net.named_parameters())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    snapshot = TrainingSnapshot.capture(parameters, optimizer, Counters(0, 0, True))
    torch.nn.functional.cross_entropy(net(IMAGES), INDICES).backward()
    optimizer.step()
    assert len(optimizer.state) == 10
    snapshot.restore(parameters)
    assert len(optimizer.state) == 0
    assert all(p.grad is None for p in parameters.values())
