"""The one owner of torch state: the model, its optimizer, the device, versions and checkpoints.

Every piece of torch work runs on a single worker thread, one call at a time. That one rule is
what makes the service safe while it trains and serves at once: a prediction runs between two
training steps, never during one, so it is computed from exactly one version of the weights;
training steps, restores and imports never interleave; and the event loop never blocks on torch.
The price is that torch calls are serialised, which on this small model costs nothing: batching
(see `app.batching`) keeps the device busy with large forward passes instead.
"""

import asyncio
import copy
import functools
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from app.batching import BatchObserver, PredictionBatcher
from app.checkpoints import CheckpointError, CheckpointInfo, CheckpointStore, LoadedCheckpoint
from app.errors import DeviceUnavailable, InvalidInput, NonFiniteStep, NotFound
from app.optimizers import OptimizerConfig, SGDConfig, optimizer_config_adapter
from app.settings import Settings
from models.lenet import INPUT_SHAPE, LAYER_NAMES, NUM_CLASSES, PARAMETER_NAMES, Net, build_net

logger = logging.getLogger("lenet.engine")

LossName = Literal["cross_entropy", "mse"]
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Prediction:
    """Logits, softmax and argmax for a batch, and the weights' version and step behind them."""

    logits: np.ndarray
    probabilities: np.ndarray
    predictions: np.ndarray
    version: int
    step: int

    def as_json(self) -> dict[str, Any]:
        """The body of a POST /predict answer."""
        return {
            "outputs": self.logits,
            "predictions": self.predictions,
            "probabilities": self.probabilities,
            "version": self.version,
            "step": self.step,
        }


@dataclass(frozen=True)
class StepResult:
    """What one training step did."""

    loss: float
    grad_norm: float
    batch_size: int
    version: int
    step: int
    optimizer: dict[str, Any]


@dataclass(frozen=True)
class LossResult:
    """The loss of a batch without an update, and optionally its autograd graph."""

    loss: float
    version: int
    step: int
    graph: dict[str, Any] | None


_OPTIMIZER_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
}


def build_optimizer(
    config: OptimizerConfig, parameters: list[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """The `torch.optim` optimizer that `config` names, over `parameters`, with a fresh state."""
    hyper_parameters: dict[str, Any] = config.model_dump(exclude={"name"})
    return _OPTIMIZER_CLASSES[config.name](parameters, **hyper_parameters)


def resolve_device(name: str) -> torch.device:
    """The torch device for the LENET_DEVICE setting; an unavailable one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"LENET_DEVICE={name} but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"LENET_DEVICE={name} but only {torch.cuda.device_count()} GPUs")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"LENET_DEVICE={name} but MPS is not available")
    return device


def _on_device_failure(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn an out-of-memory or device failure inside torch work into a 503."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except torch.OutOfMemoryError as error:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise DeviceUnavailable("the device ran out of memory; try a smaller batch") from error
        except RuntimeError as error:
            # The CPU allocator reports exhaustion as a plain RuntimeError, not OutOfMemoryError.
            if "can't allocate memory" not in str(error):
                raise
            raise DeviceUnavailable("the host ran out of memory; try a smaller batch") from error

    return wrapper


def validate_weights(tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse (InvalidInput) anything but LeNet's ten float32 parameters with finite values."""
    reference = {name: tuple(p.shape) for name, p in Net().named_parameters()}
    missing = sorted(set(reference) - set(tensors))
    extra = sorted(set(tensors) - set(reference))
    if missing or extra:
        raise InvalidInput(
            "weights must be exactly the ten LeNet parameters; "
            f"missing {missing}, unexpected {extra}"
        )
    for name, shape in reference.items():
        tensor = tensors[name]
        if tensor.dtype != torch.float32:
            raise InvalidInput(f"{name}: dtype must be float32, got {str(tensor.dtype)[6:]}")
        if tuple(tensor.shape) != shape:
            raise InvalidInput(f"{name}: shape must be {list(shape)}, got {list(tensor.shape)}")
        if not bool(torch.isfinite(tensor).all()):
            raise InvalidInput(f"{name}: values must be finite")


class Engine:
    """Holds one LeNet and everything that changes it; see the module docstring for the rules."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.checkpoints = CheckpointStore(settings.checkpoint_dir, settings.keep_checkpoints)
        self.batch_observers: list[BatchObserver] = []
        self.model = Net()
        self._parameters = dict(self.model.named_parameters())
        self.optimizer_config: OptimizerConfig = SGDConfig(lr=settings.lr)
        self.optimizer = build_optimizer(self.optimizer_config, list(self._parameters.values()))
        self.version = 0
        self.step = 0
        self.last_loss: float | None = None
        self.steps_refused = 0
        self.ready = False
        self.weights_finite = True
        # The start-up weights count as saved: they come from a checkpoint or from the seed, so
        # shutting down without any change writes nothing (and never pins a seed's weights).
        self._saved_version = 0
        self._model_info: dict[str, Any] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lenet-torch")
        self._batcher: PredictionBatcher[Prediction] = PredictionBatcher(
            self._predict_batches,
            max_images=settings.batch_max_images,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            on_batch=self._notify_batch,
        )

    # ----------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Put the model on its device (from the newest valid checkpoint, if any) and warm up."""
        await self._run(self._load_initial_state)
        self._batcher.start()
        self.ready = True

    async def close(self) -> None:
        """Stop batching, save a final checkpoint when configured, and release the thread."""
        self.ready = False
        await self._batcher.stop()
        if self.settings.autosave_on_shutdown and self.version != self._saved_version:
            try:
                info = await self._run(self._save_checkpoint)
                logger.info("saved checkpoint %s on shutdown", info.id)
            except Exception:
                logger.exception("could not save a checkpoint on shutdown")
        self._executor.shutdown(wait=True)
        self.checkpoints.versions.settle(self.version)  # nothing can answer a newer one now
        # A fresh executor (it starts no thread until used), so the same app can run its
        # lifespan again: test clients and fuzzers start and stop one app many times.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lenet-torch")

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on the torch thread and wait for it without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def _load_initial_state(self) -> None:
        if self.settings.torch_threads is not None:
            torch.set_num_threads(self.settings.torch_threads)
        if self.device.type == "cuda":
            # Keep float32 semantics on the GPU so answers stay within 1e-4 of the CPU's.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        if self.settings.seed is not None:
            self._copy_weights(build_net(self.settings.seed).state_dict())
        self.model.to(self.device)
        infos = self.checkpoints.list()
        self.checkpoints.versions.open(max((info.version for info in infos), default=None))
        for info in infos:
            try:
                self._adopt_checkpoint(self.checkpoints.load(info.id), keep_version=True)
                logger.info("loaded checkpoint %s (version %d)", info.id, info.version)
                break
            except (CheckpointError, InvalidInput) as error:
                logger.warning("skipping checkpoint %s: %s", info.id, error)
        else:  # no checkpoint: the seed's (or random) weights, under a number never used before
            seeded = self.settings.seed is not None
            self.version = self._saved_version = self.checkpoints.versions.initial(seeded)
        self._model_info = self._describe_model()
        self._predict_now(torch.zeros(1, *INPUT_SHAPE))  # warm-up: proves the model answers

    # ----------------------------------------------------------------- predictions

    async def predict(self, images: torch.Tensor) -> Prediction:
        """Logits for `images` (N, 1, H, W); batched with concurrent requests."""
        if images.shape[-2:] != INPUT_SHAPE[1:]:
            images = await self._run(resize_images, images)
        prediction = await self._batcher.submit(images)
        # Finite pixels can still overflow float32 inside the network; NaN scores would go out
        # as JSON nulls, so this request (and only this one in its batch) is refused instead.
        if not np.isfinite(prediction.logits).all():
            raise InvalidInput(
                "the network's outputs are not finite for this input (float32 overflow); "
                "scale the pixels down"
            )
        return prediction

    def arriving_prediction(self) -> Any:
        """Context manager marking a prediction request as being read (see app.batching)."""
        return self._batcher.arriving()

    async def _predict_batches(self, batches: list[torch.Tensor]) -> list[Prediction]:
        return await self._run(self._predict_split, batches)

    def _predict_split(self, batches: list[torch.Tensor]) -> list[Prediction]:
        whole = self._predict_now(batches[0] if len(batches) == 1 else torch.cat(batches))
        results, start = [], 0
        for batch in batches:
            end = start + batch.shape[0]
            results.append(
                Prediction(
                    whole.logits[start:end],
                    whole.probabilities[start:end],
                    whole.predictions[start:end],
                    whole.version,
                    whole.step,
                )
            )
            start = end
        return results

    @_on_device_failure
    def _predict_now(self, images: torch.Tensor) -> Prediction:
        with torch.inference_mode():
            logits = self.model(images.to(self.device, non_blocking=True))
            probabilities = torch.softmax(logits, dim=1)
            predictions = torch.argmax(logits, dim=1)
            logits_np, probabilities_np = (t.cpu().numpy() for t in (logits, probabilities))
            predictions_np = predictions.cpu().numpy()
        return Prediction(logits_np, probabilities_np, predictions_np, self.version, self.step)

    def _notify_batch(self, images: int, waits: list[float]) -> None:
        for observer in self.batch_observers:
            observer(images, waits)

    # ----------------------------------------------------------------- training

    def check_lr(self, lr: float | None) -> None:
        """Refuse a per-step learning rate outside (0, LENET_MAX_LR]."""
        if lr is None:
            return
        if not math.isfinite(lr) or lr <= 0 or lr > self.settings.max_lr:
            raise InvalidInput(
                f"lr must be finite, > 0 and <= LENET_MAX_LR ({self.settings.max_lr}); got {lr}"
            )

    async def train_step(
        self, images: torch.Tensor, targets: torch.Tensor, loss_name: LossName, lr: float | None
    ) -> StepResult:
        """zero_grad -> forward -> loss -> backward -> step, refused whole if anything is NaN."""
        self.check_lr(lr)
        if images.shape[-2:] != INPUT_SHAPE[1:]:
            images = await self._run(resize_images, images)
        return await self._run(self._train_step, images, targets, loss_name, lr)

    def _forward_loss(
        self, images: torch.Tensor, targets: torch.Tensor, loss_name: LossName
    ) -> torch.Tensor:
        outputs = self.model(images.to(self.device))
        targets = targets.to(self.device)
        if loss_name == "mse":
            return F.mse_loss(outputs, targets)
        return F.cross_entropy(outputs, targets)

    def _gradients(self) -> list[torch.Tensor | None]:
        return [p.grad for p in self._parameters.values()]

    def _restore_gradients(self, gradients: Sequence[torch.Tensor | None]) -> None:
        for parameter, gradient in zip(self._parameters.values(), gradients, strict=True):
            parameter.grad = gradient

    def _gradient_norm(self) -> float:
        norms = [torch.linalg.vector_norm(g) for g in self._gradients() if g is not None]
        return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0

    def _all_weights_finite(self) -> bool:
        # The largest magnitude of each tensor (NaN propagates through max), checked at once:
        # one device sync instead of ten, on the path of every training step.
        largest = torch._foreach_norm(list(self._parameters.values()), ord=math.inf)
        return bool(torch.isfinite(torch.stack(largest)).all())

    @_on_device_failure
    def _train_step(
        self, images: torch.Tensor, targets: torch.Tensor, loss_name: LossName, lr: float | None
    ) -> StepResult:
        # zero_grad(set_to_none=True) swaps in new gradient tensors, so the old ones, kept
        # here by reference, are the exact gradients to put back if the step is refused.
        version = self.checkpoints.versions.next(self.version)  # durable before any change
        previous_gradients = self._gradients()
        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss = self._forward_loss(images, targets, loss_name)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteStep(f"the loss is not finite ({loss_value}); nothing was changed")
            loss.backward()  # type: ignore[no-untyped-call]
            grad_norm = self._gradient_norm()
            if not math.isfinite(grad_norm):
                raise NonFiniteStep("the gradients are not finite; nothing was changed")
        except BaseException:
            self._restore_gradients(previous_gradients)
            self.steps_refused += 1
            raise
        saved_weights = {name: p.detach().clone() for name, p in self._parameters.items()}
        saved_state = self._copy_optimizer_state()
        saved_lrs = [group["lr"] for group in self.optimizer.param_groups]
        try:
            if lr is not None:
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            self.optimizer.step()
        except BaseException:
            # A failure mid-update (out of memory, say) must not leave half-stepped weights.
            self._copy_weights(saved_weights)
            self.optimizer.state = saved_state
            self._restore_gradients(previous_gradients)
            self.steps_refused += 1
            raise
        finally:
            for group, saved_lr in zip(self.optimizer.param_groups, saved_lrs, strict=True):
                group["lr"] = saved_lr
        if not self._all_weights_finite():
            self._copy_weights(saved_weights)
            self.optimizer.state = saved_state
            self._restore_gradients(previous_gradients)
            self.steps_refused += 1
            raise NonFiniteStep("the step would make weights non-finite; nothing was changed")
        self.version = version
        self.step += 1
        self.last_loss = loss_value
        self._autosave_if_due()
        return StepResult(
            loss=loss_value,
            grad_norm=grad_norm,
            batch_size=int(images.shape[0]),
            version=self.version,
            step=self.step,
            optimizer=self.optimizer_public(lr),
        )

    def _copy_optimizer_state(self) -> defaultdict[Any, dict[str, Any]]:
        return defaultdict(
            dict,
            {
                parameter: {
                    key: value.clone() if isinstance(value, torch.Tensor) else copy.copy(value)
                    for key, value in state.items()
                }
                for parameter, state in self.optimizer.state.items()
            },
        )

    def _autosave_if_due(self) -> None:
        every = self.settings.autosave_every
        if every and self.step % every == 0:
            try:
                self._save_checkpoint()
            except OSError:
                # The step itself succeeded; a full disk must not turn it into an error.
                logger.exception("autosave failed at step %d", self.step)

    async def loss(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        loss_name: LossName,
        backward: bool,
        graph: bool,
    ) -> LossResult:
        """The loss of a batch without an update; gradients kept with `backward`."""
        if images.shape[-2:] != INPUT_SHAPE[1:]:
            images = await self._run(resize_images, images)
        return await self._run(self._loss, images, targets, loss_name, backward, graph)

    @_on_device_failure
    def _loss(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        loss_name: LossName,
        backward: bool,
        graph: bool,
    ) -> LossResult:
        with torch.set_grad_enabled(backward or graph):
            loss = self._forward_loss(images, targets, loss_name)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteStep(f"the loss is not finite ({loss_value}); nothing was changed")
        graph_json = self._autograd_graph(loss) if graph else None
        if backward:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
        return LossResult(loss_value, self.version, self.step, graph_json)

    def _autograd_graph(self, loss: torch.Tensor) -> dict[str, Any]:
        """The whole `loss.grad_fn.next_functions` walk, breadth first, as nodes with ids."""
        names = {id(p): name for name, p in self._parameters.items()}
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

    # ----------------------------------------------------------------- optimizer

    def optimizer_public(self, lr_override: float | None = None) -> dict[str, Any]:
        """The optimizer's configuration as GET /optimizer shows it."""
        config = self.optimizer_config.model_dump()
        if lr_override is not None:
            config["lr"] = lr_override
        return config

    async def set_optimizer(self, config: OptimizerConfig) -> dict[str, Any]:
        """Switch to the optimizer `config` names, with a fresh state; weights stay as they are."""
        self.check_lr(config.lr)
        return await self._run(self._set_optimizer, config)

    def _set_optimizer(self, config: OptimizerConfig) -> dict[str, Any]:
        self.optimizer = build_optimizer(config, list(self._parameters.values()))
        self.optimizer_config = config
        return self.optimizer_public()

    # ----------------------------------------------------------------- weights

    def _copy_weights(self, tensors: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, parameter in self._parameters.items():
                parameter.copy_(tensors[name])

    def _new_weights(
        self, tensors: Mapping[str, torch.Tensor], step: int, version: int | None = None
    ) -> None:
        """Adopt new weights wholesale: a new, larger version (or `version`, a checkpoint's own
        at start-up) and no stale gradients."""
        new_version = self.checkpoints.versions.next(self.version) if version is None else version
        self._copy_weights(tensors)
        self._restore_gradients([None] * len(self._parameters))
        self.version = new_version
        self.step = step
        self.weights_finite = self._all_weights_finite()

    async def reset(self, seed: int | None) -> dict[str, int]:
        """New initial weights (seeded as LENET_SEED is) and a fresh optimizer state."""
        return await self._run(self._reset, seed)

    def _reset(self, seed: int | None) -> dict[str, int]:
        self._new_weights(build_net(seed).state_dict(), step=0)
        self.optimizer = build_optimizer(self.optimizer_config, list(self._parameters.values()))
        return {"version": self.version, "step": self.step}

    async def export_weights(self) -> bytes:
        """The weights as a safetensors file."""
        return await self._run(self._export_weights)

    def _export_weights(self) -> bytes:
        tensors = {name: p.detach().cpu().contiguous() for name, p in self._parameters.items()}
        return bytes(
            save_safetensors(
                tensors, metadata={"version": str(self.version), "step": str(self.step)}
            )
        )

    async def import_weights(self, data: bytes) -> dict[str, int]:
        """Replace the weights by a safetensors file's; step 0 and a fresh optimizer state."""
        return await self._run(self._import_weights, data)

    def _import_weights(self, data: bytes) -> dict[str, int]:
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, ValueError, TypeError) as error:
            raise InvalidInput(f"the body is not a valid safetensors file ({error})") from error
        validate_weights(tensors)
        self._new_weights(tensors, step=0)
        self.optimizer = build_optimizer(self.optimizer_config, list(self._parameters.values()))
        return {"version": self.version, "step": self.step}

    # ----------------------------------------------------------------- checkpoints

    async def save_checkpoint(self) -> CheckpointInfo:
        """Save weights, optimizer state and counters as a new checkpoint."""
        return await self._run(self._save_checkpoint)

    def _save_checkpoint(self) -> CheckpointInfo:
        info = self.checkpoints.save(
            weights={name: p.detach() for name, p in self._parameters.items()},
            optimizer_state=self.optimizer.state_dict(),
            version=self.version,
            step=self.step,
            optimizer_config=self.optimizer_public(),
        )
        self._saved_version = self.version
        return info

    async def list_checkpoints(self) -> list[CheckpointInfo]:
        """Every checkpoint on disk, newest first."""
        return await self._run(self.checkpoints.list)

    async def restore_checkpoint(self, checkpoint_id: str) -> dict[str, int]:
        """Restore a checkpoint's weights, step and optimizer state, as a new version."""
        return await self._run(self._restore_checkpoint, checkpoint_id)

    def _restore_checkpoint(self, checkpoint_id: str) -> dict[str, int]:
        if not self.checkpoints.exists(checkpoint_id):
            raise NotFound(f"no checkpoint with id {checkpoint_id!r}")
        try:
            loaded = self.checkpoints.load(checkpoint_id)
        except CheckpointError as error:
            raise InvalidInput(
                f"checkpoint {checkpoint_id!r} cannot be restored: {error}"
            ) from error
        self._adopt_checkpoint(loaded, keep_version=False)
        return {"version": self.version, "step": self.step}

    def _adopt_checkpoint(self, loaded: LoadedCheckpoint, keep_version: bool) -> None:
        validate_weights(loaded.weights)
        try:
            config = optimizer_config_adapter.validate_python(loaded.info.optimizer, strict=False)
            optimizer = build_optimizer(config, list(self._parameters.values()))
            optimizer.load_state_dict(loaded.optimizer_state)
        except Exception as error:  # noqa: BLE001 - any mismatch means an unusable checkpoint
            raise CheckpointError(f"optimizer state does not load: {error}") from error
        # At start-up the checkpoint keeps its version; a restore is a new, larger version.
        version = loaded.info.version if keep_version else None
        self._new_weights(loaded.weights, step=loaded.info.step, version=version)
        self.optimizer, self.optimizer_config = optimizer, config
        self._saved_version = self.version if keep_version else self._saved_version

    # ----------------------------------------------------------------- inspection

    async def parameters(
        self, names: Sequence[str] | None, values: bool, grads: bool
    ) -> dict[str, Any]:
        """Statistics (and on request values and gradients) of the named parameters."""
        unknown = [name for name in names or () if name not in self._parameters]
        if unknown:
            raise NotFound(f"unknown parameter name(s) {unknown}; known: {list(PARAMETER_NAMES)}")
        return await self._run(
            self._parameters_report, list(names or PARAMETER_NAMES), values, grads
        )

    def _parameters_report(self, names: list[str], values: bool, grads: bool) -> dict[str, Any]:
        def stats(tensor: torch.Tensor) -> dict[str, float]:
            numbers = torch.stack(
                [tensor.mean(), tensor.std(), tensor.min(), tensor.max(), tensor.norm()]
            ).tolist()
            return dict(zip(("mean", "std", "min", "max", "norm"), numbers, strict=True))

        entries = []
        with torch.no_grad():
            for name in dict.fromkeys(names):  # keep order, drop repeats
                parameter = self._parameters[name]
                gradient = parameter.grad
                entries.append(
                    {
                        "name": name,
                        "shape": list(parameter.shape),
                        "numel": parameter.numel(),
                        "stats": stats(parameter),
                        "grad_stats": stats(gradient) if gradient is not None else None,
                        "values": parameter.cpu().numpy() if values else None,
                        "grad": gradient.cpu().numpy() if grads and gradient is not None else None,
                    }
                )
        return {
            "version": self.version,
            "step": self.step,
            "count": len(entries),
            "total": sum(entry["numel"] for entry in entries),
            "parameters": entries,
        }

    def model_info(self) -> dict[str, Any]:
        """GET /model: the network as `print(net)` shows it, with each layer's output shape."""
        return {**self._model_info, "version": self.version, "step": self.step}

    def _describe_model(self) -> dict[str, Any]:
        shapes: dict[str, list[int]] = {}
        hooks = [
            getattr(self.model, name).register_forward_hook(
                lambda _module, _inputs, output, name=name: shapes.__setitem__(
                    name, list(output.shape[1:])
                )
            )
            for name in LAYER_NAMES
        ]
        try:
            with torch.inference_mode():
                self.model(torch.zeros(1, *INPUT_SHAPE, device=self.device))
        finally:
            for hook in hooks:
                hook.remove()
        layers = [
            {
                "name": name,
                "type": type(getattr(self.model, name)).__name__,
                "output_shape": shapes[name],
                "params": sum(p.numel() for p in getattr(self.model, name).parameters()),
            }
            for name in LAYER_NAMES
        ]
        return {
            "repr": repr(self.model),
            "layers": layers,
            "input_shape": list(INPUT_SHAPE),
            "num_classes": NUM_CLASSES,
            "parameters": sum(p.numel() for p in self._parameters.values()),
            "device": str(self.device),
            "dtype": "float32",
        }


def resize_images(images: torch.Tensor) -> torch.Tensor:
    """Resize (N, 1, H, W) to (N, 1, 32, 32), bilinear, as the contract fixes it."""
    return F.interpolate(
        images, size=INPUT_SHAPE[1:], mode="bilinear", align_corners=False, antialias=False
    )
