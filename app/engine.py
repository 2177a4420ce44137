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

Versions you can name: after every committed change the torch thread clones the weights into
`app.resident` (the newest LENET_KEEP_VERSIONS) and announces the new version on the event loop
(`changes`), which wakes `min_version` waiters and the publisher. A pinned request runs on the
torch thread with that version's tensors copied into a second network, outside the batcher (a
batch is computed from one version: the current one). In a cluster (`app.follow`) a trainer
publishes its versions to the store and a predictor adopts them (`adopt_published`) in place of
training; a predictor answers only once it holds one.
"""

import asyncio
import contextlib
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
from app.follow import Follower, Publisher
from app.observability import traced
from app.optimizers import OptimizerConfig, SGDConfig, optimizer_config_adapter
from app.pinning import PinnedPredictions
from app.prediction import Forward, Prediction, bucket_sizes, joined, predict_batch, split
from app.resident import ResidentVersion, ResidentVersions
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
from app.store import StoredVersion, VersionStore
from app.tensors import needs_resize, resize_images, save_weights, validate_weights
from app.training import build_optimizer, forward_loss, learning_rate
from models.lenet import INPUT_SHAPE, PARAMETER_NAMES, Net, build_net

logger = logging.getLogger("lenet.engine")


def check_version_choice(version: int | None, min_version: int | None) -> None:
    """Refuse (422) a request that names both an exact version and a minimum one."""
    if version is not None and min_version is not None:
        raise InvalidInput(
            "give either version (exactly that one) or min_version (at least that one), not both"
        )


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
        self.resident = ResidentVersions(settings.keep_versions)
        # Requests that name a resident version: a second network, batched per version.
        self.pinned = PinnedPredictions(self.resident, settings.batch_max_images)
        self.role = settings.role
        store_path = settings.store_path
        self.store = None if store_path is None else VersionStore(store_path)
        self.publisher: Publisher | None = None
        self.follower: Follower | None = None
        if self.store is not None and self.role == "trainer":
            self.publisher = Publisher(self, self.store, settings.publish_interval_ms / 1000)
        if self.store is not None and self.role == "predictor":
            self.follower = Follower(self, self.store, settings.poll_interval_ms / 1000)
        self.store_latest: int | None = None  # the newest version seen in (or put in) the store
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._started = False
        self.optimizer_config: OptimizerConfig = SGDConfig(lr=settings.lr)
        self.optimizer = self._fresh_optimizer(self.optimizer_config)
        self.version = 0
        self.step = 0
        self.last_loss: float | None = None
        self.steps_refused = 0
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

    @property
    def ready(self) -> bool:
        """Serving: started, and (on a predictor) holding a version from the store."""
        return self._started and self.resident.newest() is not None

    @property
    def is_predictor(self) -> bool:
        """Whether this process follows a trainer instead of training (LENET_ROLE=predictor)."""
        return self.role == "predictor"

    async def start(self) -> None:
        """Put the model on its device (from the newest valid checkpoint, if any) and warm up;
        then publish (a trainer) or follow the store (a predictor) in the background."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        await self._run(self._load_initial_state)
        self._batcher.start()
        self._started = True
        if self.publisher is not None:
            self.publisher.start()
        if self.follower is not None:
            self.follower.start()

    async def close(self) -> None:
        """Stop following, batching and publishing (a last publication on a trainer), save a
        final checkpoint when configured, and release the thread."""
        if self.follower is not None:
            await self.follower.stop()
        self._started = False
        await self._batcher.stop()
        if self.device_failed is not None:
            logger.error("no checkpoint on shutdown: the device failed, the weights are lost there")
        elif (
            not self.is_predictor
            and self.settings.autosave_on_shutdown
            and self.version != self._saved_version
        ):
            try:
                info = await self._run(self._save_checkpoint)
                logger.info("saved checkpoint %s on shutdown", info.id)
            except Exception:
                logger.exception("could not save a checkpoint on shutdown")
        if self.publisher is not None:
            await self.publisher.stop()
        self._executor.shutdown(wait=True)
        if not self.is_predictor:
            self.checkpoints.versions.settle(self.version)  # nothing can answer a newer one now
        self._loop = None
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
                self.device_failed, self._started = reason, False
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
        self.resident = ResidentVersions(self.settings.keep_versions)  # this life's versions
        self.pinned.start(self.resident, self.device)
        if self.is_predictor:  # no checkpoints, no version numbers of its own: the store's
            self.version = self.step = -1
            self._model_info = inspection.describe_model(
                self.model, self.device, self.settings.inference_dtype
            )
            self._warm_up()  # nothing is answered yet
            return
        infos = self.checkpoints.list()
        # Every version in the store was answered: a trainer on the same store continues past
        # them all, even with a fresh checkpoint folder (the store counts as a checkpoint then).
        known = [info.version for info in infos]
        stored = None if self.store is None else self.store.newest_version()
        self.store_latest = stored
        self.checkpoints.versions.open(
            max([*known, *([] if stored is None else [stored])], default=None)
        )
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
        newest = self.resident.newest()
        if newest is None or newest.version != self.version:
            self._remember()

    # ----------------------------------------------------------------- versions

    @property
    def current_version(self) -> int:
        """The newest committed version (-1 on a predictor that holds none yet)."""
        newest = self.resident.newest()
        return -1 if newest is None else newest.version

    def changes(self) -> asyncio.Event:
        """An event set at the next new version (on the event loop; call it there)."""
        return self._changed

    def _announce(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _remember(self) -> None:
        """Keep the committed weights as a resident version and announce it (torch thread)."""
        tensors = {name: p.detach().clone() for name, p in self._parameters.items()}
        self.resident.add(self.version, self.step, tensors)
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._announce)
            except RuntimeError:  # the loop has closed: nobody is waiting
                pass

    async def _reach(self, min_version: int) -> None:
        """Wait (without blocking anything) until the current version is `min_version` or
        newer; Conflict (409) past LENET_MIN_VERSION_WAIT_MS."""
        loop = asyncio.get_running_loop()
        wait_ms = self.settings.min_version_wait_ms
        deadline = loop.time() + wait_ms / 1000
        while self.current_version < min_version:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Conflict(
                    f"version {min_version} was not reached within LENET_MIN_VERSION_WAIT_MS "
                    f"({wait_ms:g} ms); the current version is {self.current_version}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def versions_public(self) -> dict[str, Any]:
        """GET /versions: the current version and the resident ones, newest first (with the lag
        behind the store on a predictor)."""
        if not self.ready:
            raise NotReady("the model is not serving: it is starting, or holds no version yet")
        entries = self.resident.newest_first()
        answer: dict[str, Any] = {
            "current": entries[0].version,
            "versions": [entry.public() for entry in entries],
        }
        if self.follower is not None:
            answer["lag_ms"] = self.follower.lag_ms
        return answer

    @property
    def lag_ms(self) -> float:
        """A predictor's lag behind the store (see `Follower.lag_ms`); 0 elsewhere."""
        return 0.0 if self.follower is None else self.follower.lag_ms

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

    async def predict(
        self, images: torch.Tensor, version: int | None = None, min_version: int | None = None
    ) -> Prediction:
        """Logits for `images` (N, 1, H, W): batched with concurrent requests; from exactly
        resident `version` when given; from the current version once it is at least
        `min_version` when given."""
        check_version_choice(version, min_version)
        if not self.ready:
            raise NotReady("the model is not serving: it is starting or shutting down")
        images = await self._network_sized(images)
        if version is not None:
            self.resident.get(version)  # 404 at once, without queueing for the torch thread
            prediction = await self.pinned.predict(images, version, self._run)
        else:
            if min_version is not None:
                await self._reach(min_version)
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
        return split(self._predict_now(joined(batches)), batches)

    @on_device_failure
    def _predict_now(self, images: torch.Tensor) -> Prediction:
        return predict_batch(
            self.model, images, self.device, self.version, self.step, self._forward
        )

    def _notify_batch(self, images: int, waits: list[float], compute_s: float) -> None:
        for observer in self.batch_observers:
            observer(images, waits, compute_s)

    # ----------------------------------------------------------------- all or nothing

    def _counters(self) -> Counters:
        return Counters(self.version, self.step, self.weights_finite)

    @contextmanager
    def _all_or_nothing(self, refused_step: bool = False) -> Iterator[None]:
        """Undo everything the block changed if it raises; `refused_step` counts it."""
        snapshot = TrainingSnapshot.capture(self._parameters, self.optimizer, self._counters())
        try:
            yield
            if self.version != snapshot.counters.version:
                self._remember()  # committed: a new version to keep and announce
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
        self,
        image: torch.Tensor,
        target: int | None,
        version: int | None,
        min_version: int | None = None,
    ) -> ExplainResponse:
        """Every layer's output and the saliency map for one image, from the current version,
        resident `version`, or the current one once it is at least `min_version`; changes
        nothing."""
        check_version_choice(version, min_version)
        if not self.ready:
            raise NotReady("the model is not serving: it is starting or shutting down")
        if version is not None:
            self.resident.get(version)
        image = await self._network_sized(image)
        if min_version is not None:
            await self._reach(min_version)
        return await self._run(self._explain, image, target, version)

    @on_device_failure
    def _explain(
        self, image: torch.Tensor, target: int | None, version: int | None
    ) -> ExplainResponse:
        if version is None:
            net, numbers = self.model, (self.version, self.step)
        else:
            net, entry = self.pinned.net(version)
            numbers = (entry.version, entry.step)
        explained = inspection.explain(net, image.to(self.device), target)
        return ExplainResponse.model_validate(
            {**explained, "version": numbers[0], "step": numbers[1]}
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

    # ----------------------------------------------------------------- the version store

    async def publication(self) -> tuple[ResidentVersion, dict[str, torch.Tensor]]:
        """The newest version and its weights on the CPU, for the publisher (the copy is taken
        on the torch thread; the resident tensors themselves are never written to)."""
        return await self._run(self._publication)

    def _publication(self) -> tuple[ResidentVersion, dict[str, torch.Tensor]]:
        entry = self.resident.newest()
        if entry is None:
            raise NotReady("no version to publish yet")
        return entry, {name: t.cpu().contiguous() for name, t in entry.tensors.items()}

    async def adopt_published(self, data: bytes, record: StoredVersion) -> None:
        """A predictor's switch to a published version (a checked safetensors file): decoded,
        validated and adopted on the torch thread, between two batches. InvalidInput when the
        weights are not sound; an older version than the one held is ignored."""
        await self._run(self._adopt_published, data, record)

    def _adopt_published(self, data: bytes, record: StoredVersion) -> None:
        assert self.is_predictor, "only a predictor takes its versions from the store"
        if record.version <= self.current_version:
            return  # never back
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, ValueError, TypeError) as error:
            raise InvalidInput(f"not a valid safetensors file ({error})") from error
        validate_weights(tensors)
        with self._all_or_nothing():
            self._copy_weights(tensors)
            for parameter in self._parameters.values():
                parameter.grad = None
            self.version, self.step = record.version, record.step
            if not self._answers_are_finite():
                raise InvalidInput("the weights' answer to a blank image is not finite")
            self.weights_finite = True

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
        publisher, loop = self.publisher, self._loop
        if publisher is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody publishes
                loop.call_soon_threadsafe(publisher.request)  # at every checkpoint, at once
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
