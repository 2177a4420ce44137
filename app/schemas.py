"""Pydantic models of requests and answers, named by role.

The hot routes parse their bodies with `app.tensors` (orjson and vectorised checks) rather than
with these models, for speed; the models still describe the bodies exactly, so the OpenAPI
schema, the docs and the tests that fuzz them see the real contract.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

LossName = Literal["cross_entropy", "mse"]
Number = float
Image = list[list[Number]]
NestedImages = Annotated[
    Image | list[Image] | list[list[Image]],
    Field(description="[H, W], [N, H, W] or [N, 1, H, W] numbers; other sizes resized to 32x32"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Base64Tensor(_Strict):
    """A batch as raw little-endian float32 bytes, base64-encoded."""

    shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=4)]
    dtype: Literal["float32"] = "float32"
    data: str


class ImageBatch(_Strict):
    """Exactly one of `inputs` and `tensor`."""

    inputs: NestedImages | None = None
    tensor: Base64Tensor | None = None


VersionNumber = Annotated[int, Field(ge=0)]
EXACT_VERSION = "answer from exactly this resident version (GET /versions); 404 if not resident"
MIN_VERSION = (
    "answer from the current version once it is at least this one (read-your-writes), waiting "
    "up to LENET_MIN_VERSION_WAIT_MS; 409 past that; not together with `version`"
)


class PredictRequest(ImageBatch):
    """Exactly one of `inputs` and `tensor`; at most one of `version` and `min_version`."""

    version: Annotated[VersionNumber | None, Field(description=EXACT_VERSION)] = None
    min_version: Annotated[VersionNumber | None, Field(description=MIN_VERSION)] = None


class TrainStepRequest(ImageBatch):
    """A batch, its targets, the loss and an optional one-step learning rate."""

    targets: list[int] | list[Number] | list[list[Number]]
    loss: LossName | None = None
    lr: Annotated[float, Field(gt=0)] | None = None


class LossRequest(TrainStepRequest):
    """As a training step, plus whether to keep gradients (added to the ones there with
    `zero_grad` false) and to return the autograd graph."""

    backward: bool = False
    graph: bool = False
    zero_grad: bool = True


class BackwardRequest(ImageBatch):
    """The tutorial's `out.backward(grad_outputs)`: N x 10 numbers (10 when N is 1)."""

    grad_outputs: list[Number] | list[list[Number]]
    zero_grad: bool = True


class StepRequest(_Strict):
    """`optimizer.step()` on the gradients already there; `lr` for this step only."""

    lr: Annotated[float, Field(gt=0)] | None = None


class ExplainRequest(PredictRequest):
    """One image; the class whose saliency to show (default: the predicted one)."""

    target: Annotated[int, Field(ge=0, le=9)] | None = None


class ResetRequest(_Strict):
    """New initial weights, seeded when `seed` is given."""

    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None


class PredictResponse(BaseModel):
    """Logits, argmax and softmax per image, and the weights that computed them."""

    outputs: list[list[float]]
    predictions: list[int]
    probabilities: list[list[float]]
    version: int
    step: int


class TrainStepResponse(BaseModel):
    """What one optimizer step did; `loss` is from before the update."""

    loss: float
    loss_name: LossName
    grad_norm: float
    batch_size: int
    version: int
    step: int
    optimizer: dict[str, Any]


class GraphNode(BaseModel):
    """One autograd node; `param` names the parameter an AccumulateGrad node feeds."""

    id: int
    name: str
    next: list[int]
    param: str | None = None


class AutogradGraph(BaseModel):
    """The graph behind a loss, as `loss.grad_fn.next_functions` walks it."""

    root: int
    nodes: list[GraphNode]


class LossResponse(BaseModel):
    """A loss without an update."""

    loss: float
    loss_name: LossName
    version: int
    step: int
    graph: AutogradGraph | None


class BackwardResponse(BaseModel):
    """The outputs of the forward pass and the norm of the gradients now held."""

    outputs: list[list[float]]
    grad_norm: float
    version: int
    step: int


class StepResponse(BaseModel):
    """What `optimizer.step()` did with the gradients that were there."""

    grad_norm: float
    version: int
    step: int
    optimizer: dict[str, Any]


class Activations(BaseModel):
    """Every layer's output for one image, as the tutorial's forward computes it."""

    conv1: list[list[list[float]]]
    pool1: list[list[list[float]]]
    conv2: list[list[list[float]]]
    pool2: list[list[list[float]]]
    fc1: list[float]
    fc2: list[float]
    fc3: list[float]


class ExplainResponse(BaseModel):
    """What one forward pass does inside, and `d fc3[target] / d x` over the 32x32 image."""

    version: int
    step: int
    prediction: int
    target: int
    outputs: list[float]
    probabilities: list[float]
    activations: Activations
    saliency: list[list[float]]


class Stats(BaseModel):
    """Summary of a tensor; `std` is unbiased, as torch.std."""

    mean: float
    std: float
    min: float
    max: float
    norm: float


class ParameterReport(BaseModel):
    """One parameter: shape, statistics, and on request its values and gradient."""

    name: str
    shape: list[int]
    numel: int
    stats: Stats
    grad_stats: Stats | None
    values: Any = None
    grad: Any = None


class ParamsResponse(BaseModel):
    """The parameters asked for."""

    version: int
    step: int
    count: int
    total: int
    parameters: list[ParameterReport]


class LayerInfo(BaseModel):
    """One module of the network and its output shape for one image."""

    name: str
    type: str
    output_shape: list[int]
    params: int


class ModelResponse(BaseModel):
    """The network as a user sees it."""

    repr: str
    layers: list[LayerInfo]
    input_shape: list[int]
    num_classes: int
    parameters: int
    device: str
    dtype: str
    inference_dtype: str = Field(
        description="the dtype of the prediction pass (LENET_INFERENCE_DTYPE)"
    )
    device_name: str = Field(description="the GPU's name, or the CPU's model")
    torch_version: str
    cuda_version: str | None = Field(
        description="the CUDA torch was built for; null on a CPU build"
    )
    version: int
    step: int


class OptimizerEntry(BaseModel):
    """One optimizer: torch's defaults and the settings `lenet train` starts from."""

    name: str
    defaults: dict[str, Any]
    train: dict[str, Any]


class OptimizerCatalogue(BaseModel):
    """GET /optimizers: every optimizer the service builds, and the web page's presets."""

    optimizers: list[OptimizerEntry]
    presets: dict[str, dict[str, Any]]


class ResidentVersionInfo(BaseModel):
    """One version held in memory."""

    version: int
    step: int
    created: str


class VersionsResponse(BaseModel):
    """GET /versions: the current version and every resident one, newest first; on a
    predictor, `lag_ms`: how long ago a newer version than the served one was published."""

    current: int
    versions: list[ResidentVersionInfo]
    lag_ms: float | None = None


class VersionResponse(BaseModel):
    """The weights' version and step after a change."""

    version: int
    step: int


class CheckpointResponse(BaseModel):
    """One saved checkpoint."""

    id: str
    version: int
    step: int
    created: str


class CheckpointListResponse(BaseModel):
    """Every checkpoint, newest first."""

    checkpoints: list[CheckpointResponse]


class ErrorDetail(BaseModel):
    """An error in FastAPI's shape: a message, or the list of validation errors."""

    detail: str | list[dict[str, Any]]


class HealthResponse(BaseModel):
    """Liveness or readiness."""

    status: str
