"""lenet_client.client: every method, sync and async, against a real server; typed answers,
errors with the server's detail, the token, and an import that needs no torch."""

import asyncio
import inspect
import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load

from app.optimizers import (
    OPTIMIZER_NAMES,
    TRAIN_CLIENT_DEFAULTS,
    AdamConfig,
    SGDConfig,
    torch_defaults,
)
from app.schemas import (
    AutogradGraph,
    BackwardResponse,
    CheckpointResponse,
    ExplainResponse,
    HealthResponse,
    LossResponse,
    ModelResponse,
    OptimizerCatalogue,
    ParamsResponse,
    PredictResponse,
    StepResponse,
    TrainStepResponse,
    VersionResponse,
    VersionsResponse,
)
from lenet_client import (
    AsyncLenetClient,
    LenetClient,
    LenetConnectionError,
    LenetError,
    LenetHTTPError,
)
from lenet_client.routes import tensor_field
from models.lenet import PARAMETER_NAMES
from tests.conftest import SEED, TEST_DEVICE, image_batch, local_net
from tests.server import LiveServer, free_port, start_test_server

TOKEN = "client-test-token"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One seeded server shared by this module: tests reset it where they need fixed weights."""
    live = start_test_server(tmp_path_factory.mktemp("client"), seed=SEED, device=TEST_DEVICE)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server that needs a token for every change."""
    root = tmp_path_factory.mktemp("client-protected")
    live = start_test_server(root, seed=SEED, device=TEST_DEVICE, api_token=TOKEN)
    yield live
    live.stop()


class AsyncAsSync:
    """AsyncLenetClient's methods called one at a time, each in its own event loop, so the
    same test body checks both clients."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url, self.token = url, token

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            async def once() -> Any:
                async with AsyncLenetClient(self.url, token=self.token) as client:
                    method = getattr(client, name)
                    assert inspect.iscoroutinefunction(method), name
                    return await method(*args, **kwargs)

            return asyncio.run(once())

        return call


@pytest.fixture(params=["sync", "async"])
def make_api(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Build a client of one kind (the test runs once with each) for a server."""
    clients: list[LenetClient] = []

    def factory(url: str, token: str | None = None) -> Any:
        if request.param == "async":
            return AsyncAsSync(url, token)
        client = LenetClient(url, token=token)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


@pytest.fixture
def api(make_api: Callable[..., Any], server: LiveServer) -> Any:
    """A client of the shared open server, whose weights are LENET_SEED's again."""
    client = make_api(server.url)
    client.reset(seed=SEED)
    return client


def local_logits(images: np.ndarray, seed: int = SEED) -> np.ndarray:
    """What the seeded network computes for (N, 32, 32) images, here with torch."""
    with torch.no_grad():
        logits: np.ndarray = local_net(seed)(torch.from_numpy(images)[:, None]).numpy()
    return logits


def png(pixels: np.ndarray) -> bytes:
    """A grayscale PNG of uint8 pixels."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- the two clients


def test_sync_and_async_clients_have_the_same_methods() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")
        }

    sync, asynchronous = public(LenetClient), public(AsyncLenetClient)
    sync.pop("close")
    asynchronous.pop("aclose")
    assert sync == asynchronous
    routes = {"predict", "predict_image", "train_step", "loss", "params", "model", "optimizer"}
    routes |= {"set_optimizer", "optimizers", "reset", "save_checkpoint", "checkpoints"}
    routes |= {"restore_checkpoint", "export_weights", "import_weights", "health", "ready"}
    routes |= {"zero_grad", "backward", "step", "explain", "versions"}
    assert set(sync) == routes | {"metrics", "send"}
    for name in asynchronous:
        assert inspect.iscoroutinefunction(getattr(AsyncLenetClient, name)), name


def test_tensor_field_keeps_the_shape_as_little_endian_float32() -> None:
    import base64

    for shape in [(3, 4), (2, 3, 4), (2, 1, 3, 4)]:
        images = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape) / 7
        field = tensor_field(images)
        assert field["shape"] == list(shape)
        assert field["dtype"] == "float32"
        decoded = np.frombuffer(base64.b64decode(field["data"]), dtype="<f4").reshape(shape)
        np.testing.assert_array_equal(decoded, images.astype(np.float32))


# ---------------------------------------------------------------- every route


@pytest.mark.server
def test_predict_takes_numpy_lists_and_the_tensor_form(api: Any) -> None:
    images = image_batch(3)[:, 0]  # (3, 32, 32)
    expected = local_logits(images)
    answers = [
        api.predict(images),
        api.predict(images.tolist()),
        api.predict(images, binary=True),
        api.predict(image_batch(3), binary=True),  # [N, 1, H, W]
        api.predict(images[::-1][::-1]),  # a strided view: made contiguous before sending
    ]
    for answer in answers:
        assert isinstance(answer, PredictResponse)
        np.testing.assert_allclose(answer.outputs, expected, atol=1e-5)
        assert answer.predictions == expected.argmax(axis=1).tolist()
        np.testing.assert_allclose(np.sum(answer.probabilities, axis=1), 1, atol=1e-5)
    one = api.predict(images[0])  # rank 2: one image
    assert len(one.outputs) == 1 and one.version == answers[0].version


@pytest.mark.server
def test_predict_image_uploads_paths_and_bytes(api: Any, tmp_path: Path) -> None:
    pixels = np.random.default_rng(4).integers(0, 256, size=(28, 28))
    path = tmp_path / "digit.png"
    path.write_bytes(png(pixels))
    answer = api.predict_image([path, ("same.png", png(pixels))])
    assert isinstance(answer, PredictResponse) and len(answer.outputs) == 2
    resized = F.interpolate(
        torch.from_numpy(pixels.astype(np.float32) / 255)[None, None],
        size=(32, 32),
        mode="bilinear",
        align_corners=False,
    )[:, 0].numpy()
    np.testing.assert_allclose(answer.outputs[0], local_logits(resized)[0], atol=1e-5)
    assert answer.outputs[0] == answer.outputs[1]
    inverted = api.predict_image([path], invert=True)
    np.testing.assert_allclose(inverted.outputs[0], local_logits(1 - resized)[0], atol=1e-5)
    with pytest.raises(LenetHTTPError) as refused:
        api.predict_image([("notes.png", b"not an image")])
    assert refused.value.status == 422 and "notes.png" in refused.value.detail


@pytest.mark.server
def test_train_step_and_loss_answer_typed_results(api: Any) -> None:
    images, labels = image_batch(4)[:, 0], np.array([0, 1, 2, 3])
    before = api.model()
    loss = api.loss(images, labels, backward=True, graph=True)
    assert isinstance(loss, LossResponse) and isinstance(loss.graph, AutogradGraph)
    assert loss.version == before.version  # /loss does not change the weights
    assert loss.loss_name == "cross_entropy"  # chosen for class indices
    names = {node.param for node in loss.graph.nodes if node.param}
    assert names == set(PARAMETER_NAMES)
    grads = api.params(grads=True)
    assert all(report.grad_stats is not None for report in grads.parameters)
    step = api.train_step(images, labels, lr=0.05, binary=True)
    assert isinstance(step, TrainStepResponse) and step.loss_name == "cross_entropy"
    assert (step.version, step.step) == (before.version + 1, before.step + 1)
    assert step.batch_size == 4 and step.optimizer["lr"] == 0.05
    assert api.optimizer().lr == 0.01  # the lr was for this step only
    assert step.loss == pytest.approx(loss.loss, rel=1e-5)  # same weights, same batch
    vectors = np.eye(10, dtype=np.float32)[labels]
    mse = api.loss(images.tolist(), vectors.tolist(), loss="mse")
    assert mse.graph is None and mse.loss > 0 and mse.loss_name == "mse"
    outputs = torch.tensor(api.predict(images).outputs)  # the weights after the step
    expected = F.mse_loss(outputs, torch.from_numpy(vectors))
    assert mse.loss == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.server
def test_the_tutorial_cells_one_at_a_time(api: Any) -> None:
    """zero_grad, backward, step: the tutorial's loop split, as torch does it locally."""
    images = image_batch(2)[:, 0]
    grad_outputs = np.random.default_rng(3).standard_normal((2, 10)).astype(np.float32)
    before = api.model()
    cleared = api.zero_grad()
    assert isinstance(cleared, VersionResponse) and cleared.version == before.version
    assert all(report.grad_stats is None for report in api.params().parameters)
    with pytest.raises(LenetHTTPError) as nothing:
        api.step()
    assert nothing.value.status == 409 and "POST /backward" in nothing.value.detail
    # The same cells locally: out = net(x); out.backward(grad_outputs); sgd step.
    net = local_net()
    outputs = net(torch.from_numpy(images)[:, None])
    outputs.backward(torch.from_numpy(grad_outputs))
    norm = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    once = api.backward(images, grad_outputs, binary=True)
    assert isinstance(once, BackwardResponse) and once.version == before.version
    np.testing.assert_allclose(once.outputs, outputs.detach(), atol=1e-5)
    assert once.grad_norm == pytest.approx(float(norm), rel=1e-4)
    twice = api.backward(images.tolist(), grad_outputs.tolist(), zero_grad=False)
    assert twice.grad_norm == pytest.approx(2 * once.grad_norm, rel=1e-4)  # accumulated
    again = api.loss(images, [1, 2], backward=True, zero_grad=False)
    assert again.loss_name == "cross_entropy" and api.params(grads=True).parameters[0].grad
    api.backward(images, grad_outputs)  # zero_grad: back to one backward's gradients
    stepped = api.step(lr=0.1)
    assert isinstance(stepped, StepResponse)
    assert (stepped.version, stepped.step) == (before.version + 1, before.step + 1)
    assert stepped.optimizer["lr"] == 0.1 and stepped.grad_norm == pytest.approx(once.grad_norm)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter -= 0.1 * parameter.grad  # plain SGD, the service's default optimizer
        expected = net(torch.from_numpy(images)[:, None]).numpy()
    np.testing.assert_allclose(api.predict(images).outputs, expected, atol=1e-5)
    assert api.step().step == stepped.step + 1  # the gradients stay after a step, as in torch


@pytest.mark.server
def test_explain(api: Any) -> None:
    image = image_batch(1)[0, 0]
    before = api.model()
    answer = api.explain(image)
    assert isinstance(answer, ExplainResponse)
    expected = local_logits(image[None])[0]
    np.testing.assert_allclose(answer.outputs, expected, atol=1e-5)
    assert answer.prediction == answer.target == int(expected.argmax())
    assert np.asarray(answer.activations.conv1).shape == (6, 28, 28)
    assert np.asarray(answer.saliency).shape == (32, 32)
    x = torch.from_numpy(image)[None, None].requires_grad_(True)
    (saliency,) = torch.autograd.grad(local_net()(x)[0, 3], x)
    other = api.explain(image, target=3, binary=True)
    assert other.target == 3
    np.testing.assert_allclose(other.saliency, saliency[0, 0], atol=1e-5)
    assert api.model().version == before.version  # read-only
    with pytest.raises(LenetHTTPError) as two:
        api.explain(image_batch(2)[:, 0])
    assert two.value.status == 422


@pytest.mark.server
def test_versions_pinned_and_read_your_writes(api: Any, tmp_path: Path) -> None:
    image = image_batch(1)[0, 0]
    first = api.predict(image).version
    stepped = api.train_step(image_batch(2), [1, 2])
    listed = api.versions()
    assert isinstance(listed, VersionsResponse)
    assert listed.current == stepped.version
    assert [entry.version for entry in listed.versions][:2] == [stepped.version, first]
    # The weights of `first` are the seed's: a pinned answer is theirs, however trained now.
    pinned = api.predict(image, version=first)
    assert pinned.version == first
    np.testing.assert_allclose(pinned.outputs[0], local_logits(image[None])[0], atol=1e-5)
    assert api.explain(image, version=first).version == first
    path = tmp_path / "digit.png"
    path.write_bytes(png(np.full((28, 28), 128)))
    assert api.predict_image([path], version=first).version == first
    assert api.predict(image, min_version=stepped.version).version >= stepped.version
    with pytest.raises(LenetHTTPError) as gone:
        api.predict(image, version=10**9)
    assert gone.value.status == 404 and "resident" in str(gone.value.detail)


@pytest.mark.server
def test_params_and_model(api: Any) -> None:
    everything = api.params()
    assert isinstance(everything, ParamsResponse)
    assert (everything.count, everything.total) == (10, 61706)
    assert [p.name for p in everything.parameters] == list(PARAMETER_NAMES)
    assert all(p.values is None and p.grad is None for p in everything.parameters)
    bias = api.params(["fc3.bias", "fc1.bias"], values=True)
    assert [p.name for p in bias.parameters] == ["fc3.bias", "fc1.bias"]
    weights = dict(local_net().named_parameters())
    np.testing.assert_allclose(bias.parameters[0].values, weights["fc3.bias"].detach(), atol=1e-7)
    with pytest.raises(LenetHTTPError) as unknown:
        api.params(["fc9.bias"])
    assert unknown.value.status == 404 and "fc9.bias" in unknown.value.detail
    model = api.model()
    assert isinstance(model, ModelResponse)
    assert (model.input_shape, model.num_classes, model.parameters) == ([1, 32, 32], 10, 61706)
    assert [layer.name for layer in model.layers] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert model.repr.startswith("Net(") and model.version == everything.version


@pytest.mark.server
def test_optimizer_get_put_and_the_catalogue(api: Any) -> None:
    adam = api.set_optimizer({"name": "adam", "lr": 1e-3})
    assert isinstance(adam, AdamConfig) and adam.betas == (0.9, 0.999)
    assert api.optimizer() == adam
    sgd = api.set_optimizer(SGDConfig(lr=0.05, momentum=0.9, nesterov=True))
    assert isinstance(sgd, SGDConfig) and sgd.nesterov and api.optimizer() == sgd
    with pytest.raises(LenetHTTPError) as refused:
        api.set_optimizer({"name": "sgd", "lr": -1})
    error = refused.value
    assert error.status == 422 and isinstance(error.detail, list)
    assert all({"loc", "msg"} <= set(item) for item in error.detail)
    assert str(error).startswith("PUT /optimizer: 422 Unprocessable")
    assert error.detail[0]["msg"] in str(error)
    assert api.optimizer() == sgd  # the refused change changed nothing
    catalogue = api.optimizers()
    assert isinstance(catalogue, OptimizerCatalogue)
    assert tuple(entry.name for entry in catalogue.optimizers) == OPTIMIZER_NAMES
    for entry in catalogue.optimizers:
        assert entry.train == TRAIN_CLIENT_DEFAULTS[entry.name]
        # JSON has no tuples: Adam's betas arrive as a list.
        defaults = json.loads(json.dumps(torch_defaults(entry.name)))
        assert entry.defaults == defaults
    api.set_optimizer({"name": "sgd", "lr": 0.01})  # the service's default again


@pytest.mark.server
def test_reset_checkpoints_and_restore(api: Any) -> None:
    images = image_batch(2)[:, 0]
    seeded = api.predict(images)
    fresh = api.reset()  # unseeded: other weights, a larger version, step 0
    assert isinstance(fresh, VersionResponse) and fresh.version > seeded.version
    assert fresh.step == 0 and api.predict(images).outputs != seeded.outputs
    again = api.reset(seed=SEED)
    assert again.version > fresh.version and api.predict(images).outputs == seeded.outputs
    api.train_step(images, [1, 2])
    saved = api.save_checkpoint()
    assert isinstance(saved, CheckpointResponse) and saved.step == 1
    listed = api.checkpoints()
    assert listed[0] == saved and all(isinstance(item, CheckpointResponse) for item in listed)
    trained = api.predict(images)
    api.reset(seed=SEED)
    restored = api.restore_checkpoint(saved.id)
    assert isinstance(restored, VersionResponse) and restored.step == saved.step
    assert api.predict(images).outputs == trained.outputs
    with pytest.raises(LenetHTTPError) as unknown:
        api.restore_checkpoint("no/such id?")  # escaped: a 404 of the restore route
    assert unknown.value.status == 404 and unknown.value.path.endswith("/restore")


@pytest.mark.server
def test_export_and_import_weights(api: Any) -> None:
    images = image_batch(2)[:, 0]
    exported = api.export_weights()
    assert isinstance(exported, bytes)
    tensors = load(exported)
    assert sorted(tensors) == sorted(PARAMETER_NAMES)
    np.testing.assert_array_equal(tensors["fc3.bias"], local_net().fc3.bias.detach())
    seeded = api.predict(images)
    api.reset()
    imported = api.import_weights(exported)
    assert isinstance(imported, VersionResponse) and imported.step == 0
    assert imported.version > seeded.version and api.predict(images).outputs == seeded.outputs
    with pytest.raises(LenetHTTPError) as refused:
        api.import_weights(b"not safetensors")
    assert 400 <= refused.value.status < 500 and refused.value.detail


@pytest.mark.server
def test_health_ready_and_metrics(api: Any) -> None:
    assert api.health() == HealthResponse(status="ok")
    assert api.ready() == HealthResponse(status="ready")
    text = api.metrics()
    assert isinstance(text, str) and "# TYPE" in text and "/predict" in text


# ---------------------------------------------------------------- errors and the token


@pytest.mark.server
def test_a_refused_request_carries_status_and_the_servers_detail(api: Any) -> None:
    before = api.model()
    with pytest.raises(LenetHTTPError) as refused:
        api.predict(np.zeros((1025, 32, 32), dtype=np.float32), binary=True)
    error = refused.value
    assert (error.method, error.path, error.status) == ("POST", "/predict", 422)
    assert isinstance(error.detail, str) and "LENET_MAX_BATCH_SIZE" in error.detail
    assert str(error) == f"POST /predict: 422 Unprocessable Entity: {error.detail}"
    with pytest.raises(LenetHTTPError) as bad_targets:
        api.train_step(np.zeros((2, 32, 32)), [1, 11])
    assert bad_targets.value.status == 422 and "0-9" in bad_targets.value.detail
    assert api.model().version == before.version


@pytest.mark.server
def test_the_token_goes_as_a_bearer_header(
    make_api: Callable[..., Any], protected: LiveServer
) -> None:
    images, labels = np.zeros((1, 32, 32)), [3]
    for token in (None, "not-the-token"):
        client = make_api(protected.url, token)
        before = client.model()  # reading needs no token
        with pytest.raises(LenetHTTPError) as refused:
            client.train_step(images, labels)
        assert refused.value.status == 401
        assert refused.value.detail == "a valid 'Authorization: Bearer <token>' header is required"
        with pytest.raises(LenetHTTPError):
            client.reset(seed=1)
        assert client.model().version == before.version
        with pytest.raises(LenetHTTPError) as cell:
            client.zero_grad()
        assert cell.value.status == 401
    client = make_api(protected.url, TOKEN)
    version = client.model().version
    assert client.train_step(images, labels).version == version + 1
    assert client.zero_grad().version == version + 1


def test_an_unreachable_service_is_a_connection_error(make_api: Callable[..., Any]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = make_api(url)
    with pytest.raises(LenetConnectionError) as failed:
        client.health()
    assert isinstance(failed.value, LenetError) and failed.value.url == url
    assert f"cannot connect to {url}" in str(failed.value)


# ---------------------------------------------------------------- no torch needed


@pytest.mark.server
def test_the_client_imports_and_works_without_torch(server: LiveServer) -> None:
    """With torch (and scikit-learn, tqdm) made unimportable, the client still answers."""
    code = textwrap.dedent(
        f"""
        import sys
        for name in ("torch", "sklearn", "tqdm"):
            sys.modules[name] = None  # import raises ModuleNotFoundError
        import lenet_client
        from lenet_client import LenetClient
        with LenetClient({server.url!r}) as client:
            answer = client.predict([[0.0] * 32] * 32)
            assert len(answer.outputs[0]) == 10, answer
            assert client.optimizers().optimizers[0].name == "sgd"
        print("ok", answer.version)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")
