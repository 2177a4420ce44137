"""KServe v2 over gRPC: the official tritonclient.grpc against a real server (LENET_GRPC_PORT),
typed tensors through tritonclient's own stubs, a closed engine in process, the token rule, and
our .proto checked field by field against the one tritonclient speaks."""

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from fastapi.testclient import TestClient
from google.protobuf.descriptor import Descriptor, EnumDescriptor
from pydantic import SecretStr
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from app.errors import Unauthorized
from app.grpc_server import bind_address, check_token
from app.main import create_app
from app.protos import grpc_predict_v2_pb2
from app.settings import Settings
from tests.conftest import SEED, TEST_DEVICE, image_batch
from tests.server import LiveServer, free_port, start_test_server

# Small limits, so that a message over the size limit and a batch over its limit stay small.
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_BATCH_SIZE = 300


@dataclass
class Served:
    """A real server and the address of its gRPC port."""

    live: LiveServer
    grpc_url: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One real server, HTTP and gRPC, for the module (no test changes the weights)."""
    port = free_port()
    live = start_test_server(
        tmp_path_factory.mktemp("grpc"),
        seed=SEED,
        device=TEST_DEVICE,
        grpc_port=port,
        max_body_bytes=MAX_BODY_BYTES,
        max_batch_size=MAX_BATCH_SIZE,
    )
    yield Served(live, f"127.0.0.1:{port}")
    live.stop()


@pytest.fixture
def server(served: Served) -> LiveServer:
    return served.live


def grpc_url(server: LiveServer, served: Served) -> str:
    assert server is served.live
    return served.grpc_url


@pytest.fixture
def client(served: Served) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(served.grpc_url)
    yield client
    client.close()


def predict(server: LiveServer, images: np.ndarray) -> tuple[np.ndarray, int]:
    """Logits and version from POST /predict (the base64 tensor form: exact float32)."""
    tensor = {
        "shape": list(images.shape),
        "dtype": "float32",
        "data": base64.b64encode(images.astype("<f4").tobytes()).decode(),
    }
    with server.client() as http:
        body = http.post("/predict", json={"tensor": tensor}).json()
    return np.asarray(body["outputs"], dtype=np.float32), body["version"]


def infer_input(images: np.ndarray, datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput("input", list(images.shape), datatype)
    tensor.set_data_from_numpy(images)
    return tensor


def refused(call: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as error:
        call()  # type: ignore[operator]
    return error.value


# ------------------------------------------------------------------ tritonclient.grpc


@pytest.mark.server
def test_live_ready_and_metadata(server: LiveServer, client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("lenet")
    _, version = predict(server, image_batch(1))
    assert client.is_model_ready("lenet", model_version=str(version))
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "lenet-serve"
    assert set(metadata["extensions"]) == {
        "binary_tensor_data",
        "model_configuration",
        "statistics",
        "model_repository",
    }
    model = client.get_model_metadata("lenet")
    assert (model.name, list(model.versions), model.platform) == (
        "lenet",
        [str(version)],
        "pytorch",
    )
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("input", "FP32", [-1, 1, 32, 32])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [
        ("logits", "FP32", [-1, 10])
    ]


@pytest.mark.server
@pytest.mark.parametrize("count", [1, 5, 256])
def test_infer_equals_predict(
    server: LiveServer, client: triton.InferenceServerClient, count: int
) -> None:
    images = image_batch(count, seed=count)
    expected, version = predict(server, images)
    result = client.infer("lenet", [infer_input(images)], request_id="req-7")
    logits = result.as_numpy("logits")
    assert logits.dtype == np.float32 and logits.shape == (count, 10)
    np.testing.assert_array_equal(logits, expected)  # same image, same version, same numbers
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (
        "lenet",
        str(version),
        "req-7",
    )
    assert response.parameters["step"].int64_param == 0
    assert len(response.raw_output_contents) == 1  # raw in, raw out
    pinned = client.infer("lenet", [infer_input(images)], model_version=str(version))
    np.testing.assert_array_equal(pinned.as_numpy("logits"), expected)


@pytest.mark.server
def test_typed_contents_in_typed_contents_out(server: LiveServer, served: Served) -> None:
    """tritonclient always sends raw bytes; its own stubs send `contents.fp32_contents`."""
    images = image_batch(3, seed=11)
    expected, version = predict(server, images)
    request = service_pb2.ModelInferRequest(model_name="lenet")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[3, 1, 32, 32])
    tensor.contents.fp32_contents.extend(images.reshape(-1).tolist())
    request.outputs.add(name="logits")
    with grpc.insecure_channel(grpc_url(server, served)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request)
        assert response.model_version == str(version)
        assert not response.raw_output_contents
        (output,) = response.outputs
        assert (output.name, output.datatype, list(output.shape)) == ("logits", "FP32", [3, 10])
        logits = np.asarray(output.contents.fp32_contents, dtype=np.float32).reshape(3, 10)
        np.testing.assert_array_equal(logits, expected)
        both = service_pb2.ModelInferRequest()
        both.CopyFrom(request)
        both.raw_input_contents.append(images.tobytes())
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(both)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "both contents and raw_input_contents" in str(error.value.details())


@pytest.mark.server
def test_unknown_model_and_version_are_not_found(client: triton.InferenceServerClient) -> None:
    images = image_batch(1)
    for call in (
        lambda: client.infer("resnet", [infer_input(images)]),
        lambda: client.get_model_metadata("resnet"),
        lambda: client.is_model_ready("resnet"),
        lambda: client.get_model_config("resnet"),
        lambda: client.get_inference_statistics("resnet"),
    ):
        error = refused(call)
        assert error.status() == "StatusCode.NOT_FOUND"
        assert "unknown model 'resnet'" in error.message()
    error = refused(lambda: client.infer("lenet", [infer_input(images)], model_version="999999"))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert "version '999999' of model 'lenet' is not available" in error.message()


@pytest.mark.server
def test_bad_input_is_invalid_argument(client: triton.InferenceServerClient) -> None:
    cases = {
        "shape must be [N, 1, 32, 32]": [infer_input(image_batch(2, side=28))],
        "datatype must be FP32": [infer_input(image_batch(1).astype(np.float64), "FP64")],
        "must hold finite float32 values": [
            infer_input(np.full((1, 1, 32, 32), np.inf, dtype=np.float32))
        ],
        "unknown input 'pixels'": [triton.InferInput("pixels", [1, 1, 32, 32], "FP32")],
        "LENET_MAX_BATCH_SIZE": [infer_input(np.zeros((MAX_BATCH_SIZE + 1, 1, 32, 32), "f4"))],
    }
    cases["unknown input 'pixels'"][0].set_data_from_numpy(image_batch(1))
    for message, inputs in cases.items():
        error = refused(lambda inputs=inputs: client.infer("lenet", inputs))
        assert error.status() == "StatusCode.INVALID_ARGUMENT", message
        assert message in error.message(), error.message()
    error = refused(
        lambda: client.infer(
            "lenet", [infer_input(image_batch(1))], outputs=[triton.InferRequestedOutput("probs")]
        )
    )
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "unknown output" in error.message()


@pytest.mark.server
def test_a_message_over_the_body_limit_is_resource_exhausted(
    client: triton.InferenceServerClient,
) -> None:
    too_many = MAX_BODY_BYTES // (32 * 32 * 4) + 1  # just over LENET_MAX_BODY_BYTES, raw
    error = refused(
        lambda: client.infer("lenet", [infer_input(np.zeros((too_many, 1, 32, 32), "f4"))])
    )
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_ready()  # and the server goes on


@pytest.mark.server
def test_config_statistics_and_repository_index(
    server: LiveServer, client: triton.InferenceServerClient
) -> None:
    config = client.get_model_config("lenet").config
    assert (config.name, config.platform, config.max_batch_size) == ("lenet", "pytorch", 300)
    (tensor,) = config.input
    assert (tensor.name, list(tensor.dims)) == ("input", [1, 32, 32])
    assert tensor.data_type == triton.model_config_pb2.TYPE_FP32
    assert tensor.format == triton.model_config_pb2.ModelInput.FORMAT_NCHW
    assert [(out.name, list(out.dims)) for out in config.output] == [("logits", [10])]
    before = client.get_inference_statistics("lenet").model_stats[0]
    client.infer("lenet", [infer_input(image_batch(4))])
    refused(lambda: client.infer("lenet", [infer_input(image_batch(1, side=28))]))
    after = client.get_inference_statistics("lenet").model_stats[0]
    assert after.execution_count - before.execution_count == 1
    assert after.inference_count - before.inference_count == 4
    stats, old = after.inference_stats, before.inference_stats
    assert (stats.success.count - old.success.count, stats.fail.count - old.fail.count) == (1, 1)
    assert stats.compute_infer.ns > old.compute_infer.ns and stats.success.ns > old.success.ns
    assert 4 in {batch.batch_size for batch in after.batch_stats}
    # The same figures as REST reports.
    with server.client() as http:
        rest = http.get("/v2/models/lenet/stats").json()["model_stats"][0]
    assert rest["execution_count"] == after.execution_count
    assert rest["inference_stats"]["success"]["count"] == stats.success.count
    everything = client.get_inference_statistics().model_stats
    assert [entry.name for entry in everything] == ["lenet"]
    index = client.get_model_repository_index(as_json=True)
    assert index == {"models": [{"name": "lenet", "version": after.version, "state": "READY"}]}


@pytest.mark.server
def test_sixteen_concurrent_clients(server: LiveServer, served: Served) -> None:
    images = image_batch(64, seed=5)
    expected, _ = predict(server, images)

    def infer_rows(start: int) -> np.ndarray:
        client = triton.InferenceServerClient(served.grpc_url)
        try:
            rows = [
                client.infer("lenet", [infer_input(images[row : row + 1])]).as_numpy("logits")
                for row in range(start, start + 4)
            ]
        finally:
            client.close()
        return np.concatenate(rows)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(infer_rows, range(0, 64, 4)))
    # Batched with each other or not, every answer is its own image's.
    np.testing.assert_allclose(np.concatenate(answers), expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ in process: not ready


def test_a_closed_engine_is_not_ready_and_infer_is_unavailable(tmp_path: Path) -> None:
    settings = Settings(
        device=TEST_DEVICE,
        seed=SEED,
        checkpoint_dir=tmp_path / "checkpoints",
        autosave_on_shutdown=False,
        grpc_port=0,  # any free port
    )
    app = create_app(settings)
    with TestClient(app) as http:
        port = app.state.grpc_server.port
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            assert client.is_server_ready() and client.is_model_ready("lenet")
            http.portal.call(app.state.engine.close)  # as at shutdown: the engine stops serving
            assert client.is_server_live()
            assert not client.is_server_ready()
            assert not client.is_model_ready("lenet")
            assert http.get("/v2/health/ready").status_code == 503  # as REST says
            error = refused(lambda: client.infer("lenet", [infer_input(image_batch(1))]))
            assert error.status() == "StatusCode.UNAVAILABLE"
            assert "not serving" in error.message()
            index = client.get_model_repository_index(as_json=True)["models"]
            assert index[0]["state"] == "UNAVAILABLE"
        finally:
            client.close()
    # Stopped with the lifespan: nothing answers on the port any more.
    after = triton.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        assert refused(after.is_server_live).status() == "StatusCode.UNAVAILABLE"
    finally:
        after.close()


def test_grpc_is_off_unless_its_port_is_set(tmp_path: Path) -> None:
    settings = Settings(device=TEST_DEVICE, checkpoint_dir=tmp_path / "checkpoints")
    assert settings.grpc_port is None
    assert create_app(settings).state.grpc_server is None
    assert Settings(grpc_port="").grpc_port is None  # type: ignore[arg-type]


# ------------------------------------------------------------------ the token rule


def test_check_token() -> None:
    token = SecretStr("grpc-secret-token")
    check_token([], None)  # no LENET_API_TOKEN: anything goes
    check_token([("authorization", "Bearer grpc-secret-token")], token)
    check_token([("Authorization", b"bearer  grpc-secret-token ")], token)
    for metadata in (
        [],
        [("authorization", "Bearer wrong")],
        [("authorization", "grpc-secret-token")],
        [("x-token", "Bearer grpc-secret-token")],
    ):
        with pytest.raises(Unauthorized, match="authorization: Bearer"):
            check_token(metadata, token)


def test_bind_address() -> None:
    assert bind_address("127.0.0.1", 8001) == "127.0.0.1:8001"
    assert bind_address("::1", 8001) == "[::1]:8001"
    assert bind_address("[::1]", 8001) == "[::1]:8001"


# ------------------------------------------------------------------ the .proto


def _check_message(ours: Descriptor, theirs: Descriptor) -> None:
    for field in ours.fields:
        other = theirs.fields_by_name.get(field.name)
        assert other is not None, f"{ours.full_name}.{field.name} is not in tritonclient's"
        assert (field.number, field.type, field.is_repeated) == (
            other.number,
            other.type,
            other.is_repeated,
        ), f"{ours.full_name}.{field.name}"
        for kind in ("message_type", "enum_type"):
            mine, its = getattr(field, kind), getattr(other, kind)
            assert (mine and mine.full_name) == (its and its.full_name), field.full_name
    for nested in ours.nested_types:
        _check_message(nested, theirs.nested_types_by_name[nested.name])
    for enum in ours.enum_types:
        _check_enum(enum, theirs.enum_types_by_name[enum.name])


def _check_enum(ours: EnumDescriptor, theirs: EnumDescriptor) -> None:
    for value in ours.values:
        assert theirs.values_by_name[value.name].number == value.number, value.name


def test_our_proto_is_a_wire_compatible_subset_of_tritonclients() -> None:
    mine = grpc_predict_v2_pb2.DESCRIPTOR
    assert mine.package == "inference"
    pool = service_pb2.DESCRIPTOR.pool
    for name, message in mine.message_types_by_name.items():
        _check_message(message, pool.FindMessageTypeByName(f"inference.{name}"))
    for name, enum in mine.enum_types_by_name.items():
        _check_enum(enum, pool.FindEnumTypeByName(f"inference.{name}"))
    ours = mine.services_by_name["GRPCInferenceService"]
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
    # KServe's six calls and the three Triton extensions tritonclient.grpc calls.
    assert {method.name for method in ours.methods} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
    }
