"""The one owner of torch state: the model, its optimizer, the device, versions and checkpoints.

Every piece of torch work runs on a single worker thread, one call at a time. That one rule is
what makes the service safe while it trains and serves at once: a prediction runs between two
training steps, never during one, so it is computed from exactly one version of the weights;
training steps, restores and imports never interleave; and the event loop never blocks on torch.
The price is that torch calls are serialised, which on this small model costs nothing: batching
(see `app.batching`) keeps the device busy with large forward passes instead.

Every change is all or nothing: `_all_or_nothing` takes a `TrainingSnapshot` first and puts it
back if anything fails or is refused. What is stateless lives beside the engine: the codec and
weight checks in `app.tensors`, the graph walk and reports in `app.inspection`.
"""

import asyncio
import contextvars
import functools
import logging
import math
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from app import inspection
from app.batching import BatchObserver, PredictionBatcher
from app.checkpoints import CheckpointError, CheckpointInfo, CheckpointStore, LoadedCheckpoint
from app.device import (
    configure,
    device_answers,
    is_device_error,
    on_device_failure,
    resolve_device,
)
from app.errors import (
    Conflict,
    DeviceUnavailable,
    InvalidInput,
    NonFiniteStep,
    NotFound,
    NotReady,
)
from app.observability import traced
from app.optimizers import OptimizerConfig, SGDConfig, optimizer_config_adapter
from app.prediction import Forward, Prediction, bucket_sizes, predict_batch
from app.schemas import (
    BackwardResponse,
    ExplainResponse,
    LossName,
    LossResponse,
    StepResponse,
    TrainStepResponse,
)
from app.settings import Settings
from app.snapshot import Counters, TrainingSnapshot
from app.tensors import needs_resize, resize_images, save_weights, validate_weights
from app.training import build_optimizer, forward_loss, learning_rate
from models.lenet import INPUT_SHAPE, PARAMETER_NAMES, Net, build_net

logger = logging.getLogger("lenet.engine")

P = ParamSpec("P")
T = TypeVar("T")


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
        self.optimizer = self._fresh_optimizer(self.optimizer_config)
        self.version = 0
        self.step = 0
        self.last_loss: float | None = None
        self.steps_refused = 0
        self.ready = False
        self.weights_finite = True
        # Set (to the error's first line) when the device failed for good: readiness is 503, no
        # torch work runs any more, and `on_device_failed` stops the server (see `_guarded`).
        self.device_failed: str | None = None
        self.on_device_failed: Callable[[str], None] = self._stop_this_process
        self._forward: Forward | None = None
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
        if self.device_failed is not None:
            logger.error("no checkpoint on shutdown: the device failed, the weights are lost there")
        elif self.settings.autosave_on_shutdown and self.version != self._saved_version:
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
        # The caller's context goes along: its request id in log lines, its span as the parent.
        call = traced(self._guarded(fn), args, lambda: self.version)
        run = functools.partial(contextvars.copy_context().run, call, *args, **kwargs)
        return await loop.run_in_executor(self._executor, run)

    def _guarded(self, fn: Callable[P, T]) -> Callable[P, T]:
        """`fn` refused once the device has failed, and watched for a device failure: a CUDA
        error after which the device no longer answers marks the engine failed (not ready, and
        the server stops for its orchestrator to restart it); one after which it still answers
        fails that call alone. Either way the caller gets a 503."""

        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> T:
            if self.device_failed is not None:
                raise DeviceUnavailable(f"the device failed ({self.device_failed}); restarting")
            try:
                return fn(*args, **kwargs)
            except Exception as error:
                if not is_device_error(error):
                    raise
                reason = str(error).strip().splitlines()[0][:300]
                if device_answers(self.model, self.device, INPUT_SHAPE):
                    logger.error("device error, but the device still answers: %s", reason)
                    raise DeviceUnavailable(f"the device failed on this call: {reason}") from error
                self.device_failed, self.ready = reason, False
                logger.critical(
                    "the device %s failed and does not answer any more (%s); not ready, stopping "
                    "so that the service is restarted",
                    self.device,
                    reason,
                )
                self.on_device_failed(reason)
                raise DeviceUnavailable(f"the device failed ({reason}); restarting") from error

        return call

    def _stop_this_process(self, reason: str) -> None:
        """The default `on_device_failed` (`lenet serve` sets its own): SIGTERM to this process,
        which uvicorn takes as a graceful shutdown."""
        if self.settings.exit_on_device_failure:
            os.kill(os.getpid(), signal.SIGTERM)

    async def _network_sized(self, images: torch.Tensor) -> torch.Tensor:
        """`images` (N, 1, H, W) at the network's 32x32; resizing is torch work, off the loop."""
        return await self._run(resize_images, images) if needs_resize(images) else images

    def _load_initial_state(self) -> None:
        if self.settings.torch_threads is not None:
            torch.set_num_threads(self.settings.torch_threads)
        configure(self.device)
        if self.settings.seed is not None:
            self._copy_weights(build_net(self.settings.seed).state_dict())
        self.model.to(self.device)
        graphs = self.settings.cuda_graphs != "off" and self.device.type == "cuda"
        self._forward = Forward(self.model, self.device, self.settings.inference_dtype, graphs)
        infos = self.checkpoints.list()
        self.checkpoints.versions.open(max((info.version for info in infos), default=None))
        for info in infos:
            try:
                with self._all_or_nothing():
                    self._adopt_checkpoint(self.checkpoints.load(info.id), at_start=True)
                logger.info("loaded checkpoint %s (version %d)", info.id, info.version)
                break
            except (CheckpointError, InvalidInput) as error:
                logger.warning("skipping checkpoint %s: %s", info.id, error)
        else:  # no checkpoint: the seed's (or random) weights, under a number never used before
            seeded = self.settings.seed is not None
            self.version = self._saved_version = self.checkpoints.versions.initial(seeded)
        self.weights_finite = self._answers_are_finite()
        self._model_info = inspection.describe_model(
            self.model, self.device, self.settings.inference_dtype
        )
        self._warm_up()

    def _warm_up(self) -> None:
        """Log what computes, and prove the model answers: one image, or every batch bucket on
        CUDA (capturing the CUDA graphs) and with LENET_WARMUP_BUCKETS=on."""
        info, forward = self._model_info, self._forward
        assert forward is not None, "made before the warm-up"
        logger.info(
            "torch %s, CUDA %s, on %s (%s), predictions in %s%s",
            info["torch_version"],
            info["cuda_version"],
            self.device,
            info["device_name"],
            forward.dtype,
            " with CUDA graphs" if forward.cuda_graphs else "",
        )
        choice = self.settings.warmup_buckets
        if choice == "on" or (choice == "auto" and self.device.type == "cuda"):
            limit = max(self.settings.max_batch_size, self.settings.batch_max_images)
            sizes = bucket_sizes(limit)
        else:
            sizes = [1]
        seconds = forward.warm_up(sizes, INPUT_SHAPE)
        logger.info("warm-up: %d batch size(s) up to %d in %.2f s", len(sizes), sizes[-1], seconds)

    # ----------------------------------------------------------------- predictions

    async def predict(self, images: torch.Tensor) -> Prediction:
        """Logits for `images` (N, 1, H, W); batched with concurrent requests."""
        if not self.ready:
            raise NotReady("the model is not serving: it is starting or shutting down")
        prediction = await self._batcher.submit(await self._network_sized(images))
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
        ends = np.cumsum([batch.shape[0] for batch in batches]).tolist()
        return [
            whole.rows(end - batch.shape[0], end) for batch, end in zip(batches, ends, strict=True)
        ]

    @on_device_failure
    def _predict_now(self, images: torch.Tensor) -> Prediction:
        return predict_batch(
            self.model, images, self.device, self.version, self.step, self._forward
        )

    def _notify_batch(self, images: int, waits: list[float]) -> None:
        for observer in self.batch_observers:
            observer(images, waits)

    # ----------------------------------------------------------------- all or nothing

    def _counters(self) -> Counters:
        return Counters(self.version, self.step, self.weights_finite)

    @contextmanager
    def _all_or_nothing(self, refused_step: bool = False) -> Iterator[None]:
        """Undo everything the block changed if it raises; `refused_step` counts it."""
        snapshot = TrainingSnapshot.capture(self._parameters, self.optimizer, self._counters())
        try:
            yield
        except BaseException:
            snapshot.restore(self._parameters)
            self.optimizer = snapshot.optimizer
            counters = snapshot.counters
            self.version, self.step, self.weights_finite = (
                counters.version,
                counters.step,
                counters.weights_finite,
            )
            self.steps_refused += int(refused_step)
            raise

    def _finite_loss(self, loss: torch.Tensor) -> float:
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteStep(f"the loss is not finite ({value}); nothing was changed")
        return value

    def _finite_gradient_norm(self) -> float:
        norm = inspection.global_norm(
            [p.grad for p in self._parameters.values() if p.grad is not None]
        )
        if not math.isfinite(norm):
            raise NonFiniteStep("the gradients are not finite; nothing was changed")
        return norm

    def _all_weights_finite(self) -> bool:
        # The largest magnitude of each tensor (NaN propagates through max), checked at once:
        # one device sync instead of ten, on the path of every training step.
        largest = torch._foreach_norm(list(self._parameters.values()), ord=math.inf)
        return bool(torch.isfinite(torch.stack(largest)).all())

    def _answers_are_finite(self) -> bool:
        """Finite weights whose answer to a blank image is finite too (weights near float32's
        limit pass the first test and overflow in every forward pass)."""
        if not self._all_weights_finite():
            return False
        with torch.inference_mode():
            blank = torch.zeros(1, *INPUT_SHAPE, device=self.device)
            return bool(torch.isfinite(self.model(blank)).all())

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
    ) -> TrainStepResponse:
        """zero_grad -> forward -> loss -> backward -> step, refused whole if anything is NaN."""
        self.check_lr(lr)
        images = await self._network_sized(images)
        return await self._run(self._train_step, images, targets, loss_name, lr)

    def _forward_loss(
        self, images: torch.Tensor, targets: torch.Tensor, loss_name: LossName
    ) -> torch.Tensor:
        return forward_loss(self.model, images, targets, loss_name, self.device)

    def _optimizer_step(self, lr: float | None) -> None:
        """optimizer.step(), with `lr` for this step only; refused if a weight turns non-finite."""
        version = self.checkpoints.versions.next(self.version)  # durable before any change
        with learning_rate(self.optimizer, lr):
            self.optimizer.step()
        if not self._all_weights_finite():
            raise NonFiniteStep("the step would make weights non-finite; nothing was changed")
        self.version = version
        self.step += 1

    @on_device_failure
    def _train_step(
        self, images: torch.Tensor, targets: torch.Tensor, loss_name: LossName, lr: float | None
    ) -> TrainStepResponse:
        with self._all_or_nothing(refused_step=True):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._forward_loss(images, targets, loss_name)
            loss_value = self._finite_loss(loss)
            loss.backward()  # type: ignore[no-untyped-call]
            grad_norm = self._finite_gradient_norm()
            self._optimizer_step(lr)
        self.last_loss = loss_value
        self._autosave_if_due()
        return TrainStepResponse(
            loss=loss_value,
            loss_name=loss_name,
            grad_norm=grad_norm,
            batch_size=int(images.shape[0]),
            version=self.version,
            step=self.step,
            optimizer=self.optimizer_public(lr),
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
        zero_grad: bool = True,
    ) -> LossResponse:
        """The loss of a batch without an update; gradients kept with `backward` (added to
        those there when not `zero_grad`)."""
        images = await self._network_sized(images)
        return await self._run(self._loss, images, targets, loss_name, backward, graph, zero_grad)

    @on_device_failure
    def _loss(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        loss_name: LossName,
        backward: bool,
        graph: bool,
        zero_grad: bool,
    ) -> LossResponse:
        with torch.set_grad_enabled(backward or graph):
            loss = self._forward_loss(images, targets, loss_name)
        loss_value = self._finite_loss(loss)
        graph_json = inspection.autograd_graph(loss, self._parameters) if graph else None
        if backward:
            self._backward(loss, None, zero_grad)
        return LossResponse.model_validate(
            {
                "loss": loss_value,
                "loss_name": loss_name,
                "version": self.version,
                "step": self.step,
                "graph": graph_json,
            }
        )

    def _backward(
        self, tensor: torch.Tensor, gradient: torch.Tensor | None, zero_grad: bool
    ) -> float:
        """`tensor.backward(gradient)` into the parameters' gradients, after zeroing them if
        asked; refused whole if any gradient turns non-finite. Answers the gradients' norm."""
        with self._all_or_nothing():
            if zero_grad:
                self.optimizer.zero_grad(set_to_none=True)
            tensor.backward(gradient)  # type: ignore[no-untyped-call]
            return self._finite_gradient_norm()

    # ----------------------------------------------------------------- the tutorial's cells

    async def zero_grad(self) -> dict[str, int]:
        """`net.zero_grad()`: every gradient becomes None (set_to_none, torch's default)."""
        return await self._run(self._zero_grad)

    def _zero_grad(self) -> dict[str, int]:
        self.model.zero_grad(set_to_none=True)
        return {"version": self.version, "step": self.step}

    async def backward(
        self, images: torch.Tensor, grad_outputs: torch.Tensor, zero_grad: bool
    ) -> BackwardResponse:
        """`out = net(x); out.backward(grad_outputs)`; the gradients stay for `/step`."""
        images = await self._network_sized(images)
        return await self._run(self._backward_outputs, images, grad_outputs, zero_grad)

    @on_device_failure
    def _backward_outputs(
        self, images: torch.Tensor, grad_outputs: torch.Tensor, zero_grad: bool
    ) -> BackwardResponse:
        outputs = self.model(images.to(self.device))
        grad_norm = self._backward(outputs, grad_outputs.to(self.device), zero_grad)
        return BackwardResponse.model_validate(
            {
                "outputs": outputs.detach().cpu().tolist(),
                "grad_norm": grad_norm,
                "version": self.version,
                "step": self.step,
            }
        )

    async def step_with_gradients(self, lr: float | None) -> StepResponse:
        """`optimizer.step()` on the gradients already there; they stay afterwards."""
        self.check_lr(lr)
        return await self._run(self._step_with_gradients, lr)

    @on_device_failure
    def _step_with_gradients(self, lr: float | None) -> StepResponse:
        if all(p.grad is None for p in self._parameters.values()):
            raise Conflict(
                'there are no gradients to step with: run POST /loss with "backward": true '
                "or POST /backward first"
            )
        with self._all_or_nothing(refused_step=True):
            grad_norm = self._finite_gradient_norm()
            self._optimizer_step(lr)
        self._autosave_if_due()
        return StepResponse(
            grad_norm=grad_norm,
            version=self.version,
            step=self.step,
            optimizer=self.optimizer_public(lr),
        )

    async def explain(
        self, image: torch.Tensor, target: int | None, version: int | None
    ) -> ExplainResponse:
        """Every layer's output and the saliency map for one image; changes nothing."""
        if version is not None and version != self.version:
            raise NotFound(
                f"version {version} is not resident; only the current version {self.version} is"
            )
        image = await self._network_sized(image)
        return await self._run(self._explain, image, target)

    @on_device_failure
    def _explain(self, image: torch.Tensor, target: int | None) -> ExplainResponse:
        explained = inspection.explain(self.model, image.to(self.device), target)
        return ExplainResponse.model_validate(
            {**explained, "version": self.version, "step": self.step}
        )

    # ----------------------------------------------------------------- optimizer

    def _fresh_optimizer(self, config: OptimizerConfig) -> torch.optim.Optimizer:
        return build_optimizer(config, list(self._parameters.values()))

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
        self.optimizer = self._fresh_optimizer(config)
        self.optimizer_config = config
        return self.optimizer_public()

    # ----------------------------------------------------------------- weights

    def _copy_weights(self, tensors: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, parameter in self._parameters.items():
                parameter.copy_(tensors[name])

    def _adopt_weights(
        self, tensors: Mapping[str, torch.Tensor], step: int, version: int | None = None
    ) -> None:
        """Take new weights wholesale: a new, larger version (or `version`, a checkpoint's own at
        start-up), no stale gradients; weights whose answers overflow are refused (call inside
        `_all_or_nothing`)."""
        new_version = self.checkpoints.versions.next(self.version) if version is None else version
        self._copy_weights(tensors)
        for parameter in self._parameters.values():
            parameter.grad = None
        self.version = new_version
        self.step = step
        if not self._answers_are_finite():
            raise InvalidInput(
                "the weights' answer to a blank image is not finite (float32 overflow)"
            )
        self.weights_finite = True

    async def reset(self, seed: int | None) -> dict[str, int]:
        """New initial weights (seeded as LENET_SEED is) and a fresh optimizer state."""
        return await self._run(self._replace_weights, build_net(seed).state_dict(), None)

    async def import_weights(self, data: bytes) -> dict[str, int]:
        """Replace the weights by a safetensors file's; step 0 and a fresh optimizer state."""
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, ValueError, TypeError) as error:
            raise InvalidInput(f"the body is not a valid safetensors file ({error})") from error
        validate_weights(tensors)
        return await self._run(self._replace_weights, tensors, None)

    def _replace_weights(
        self, tensors: Mapping[str, torch.Tensor], loaded: LoadedCheckpoint | None
    ) -> dict[str, int]:
        """Reset and import (`loaded` None: step 0, fresh optimizer state) or restore."""
        with self._all_or_nothing():
            if loaded is None:
                self._adopt_weights(tensors, step=0)
                self.optimizer = self._fresh_optimizer(self.optimizer_config)
            else:
                self._adopt_checkpoint(loaded, at_start=False)
        return {"version": self.version, "step": self.step}

    async def export_weights(self) -> bytes:
        """The weights as a safetensors file, the same bytes for the same version."""
        return await self._run(self._export_weights)

    def _export_weights(self) -> bytes:
        tensors = {name: p.detach().cpu().contiguous() for name, p in self._parameters.items()}
        return save_weights(tensors, {"version": str(self.version), "step": str(self.step)})

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
        return self._replace_weights(loaded.weights, loaded)

    def _adopt_checkpoint(self, loaded: LoadedCheckpoint, at_start: bool) -> None:
        validate_weights(loaded.weights)
        try:
            config = optimizer_config_adapter.validate_python(loaded.info.optimizer, strict=False)
            optimizer = self._fresh_optimizer(config)
            optimizer.load_state_dict(loaded.optimizer_state)
        except Exception as error:  # noqa: BLE001 - any mismatch means an unusable checkpoint
            raise CheckpointError(f"optimizer state does not load: {error}") from error
        # At start-up the checkpoint keeps its version; a restore is a new, larger version.
        version = loaded.info.version if at_start else None
        self._adopt_weights(loaded.weights, step=loaded.info.step, version=version)
        self.optimizer, self.optimizer_config = optimizer, config
        if at_start:
            self._saved_version = self.version

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
        entries = inspection.parameters_report(self._parameters, names, values, grads)
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
