"""Predictions from a resident version named by the request (`"version": V`).

A second network holds version V's weights (copied in only when another version is asked for),
and the requests that name one version are batched together: those that arrive while the torch
thread is busy join one forward pass (bench/pinned.py: 4x the throughput of one pass each at 64
concurrent requests). Owned by `app.engine`: `predict` runs on the event loop and hands the
forward pass to the engine's torch thread through the `run` it is given; everything that
touches the second network runs there. The lock guards the handover between the two threads.
"""

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from app.device import on_device_failure
from app.prediction import Prediction, joined, predict_batch, split
from app.resident import ResidentVersion, ResidentVersions
from models.lenet import Net

# The engine's `_run`: a function and its arguments, run on the torch thread.
TorchRunner = Callable[..., Awaitable[Any]]


@dataclass
class _PinnedGroup:
    """Pinned requests for one version, gathered while they wait for the torch thread."""

    version: int
    batches: list[torch.Tensor] = field(default_factory=list)
    images: int = 0
    started: bool = False  # set on the torch thread when it takes the group: no more joiners
    result: "asyncio.Future[list[Prediction]] | None" = None


class PinnedPredictions:
    """The second network and the per-version batches of pinned requests."""

    def __init__(self, resident: ResidentVersions, max_images: int) -> None:
        self.resident = resident
        self.max_images = max_images
        self._net = Net().requires_grad_(False)
        self._net_version: int | None = None
        self._device = torch.device("cpu")
        self._lock = threading.Lock()
        self._groups: dict[int, _PinnedGroup] = {}

    def start(self, resident: ResidentVersions, device: torch.device) -> None:
        """Follow this life's resident versions on `device` (torch thread, at start-up)."""
        self.resident = resident
        self._device = device
        self._net.to(device)
        self._net_version = None

    def net(self, version: int) -> tuple[Net, ResidentVersion]:
        """The second network, holding resident version `version` (NotFound otherwise; torch
        thread)."""
        entry = self.resident.get(version)
        if self._net_version != entry.version:
            with torch.no_grad():
                for name, parameter in self._net.named_parameters():
                    parameter.copy_(entry.tensors[name])
            self._net_version = entry.version
        return self._net, entry

    async def predict(self, images: torch.Tensor, version: int, run: TorchRunner) -> Prediction:
        """`images` through exactly resident `version`, in one forward pass with the other
        requests for that version that arrive before the torch thread takes them."""
        count = int(images.shape[0])
        with self._lock:
            group = self._groups.get(version)
            leads = group is None or group.started or group.images + count > self.max_images
            if leads:
                group = self._groups[version] = _PinnedGroup(version)
            assert group is not None
            index = len(group.batches)
            group.batches.append(images)
            group.images += count
        if leads:  # no await since the lock: nobody sees the group without its result
            group.result = asyncio.ensure_future(run(self._predict_group, group))
            # Read the outcome even if every waiter went away (no "never retrieved" warning).
            group.result.add_done_callback(lambda done: done.cancelled() or done.exception())
        assert group.result is not None
        # Shielded: a client that goes away must not cancel the pass the others wait for.
        predictions: list[Prediction] = await asyncio.shield(group.result)
        return predictions[index]

    @on_device_failure
    def _predict_group(self, group: _PinnedGroup) -> list[Prediction]:
        with self._lock:
            group.started = True
            if self._groups.get(group.version) is group:
                del self._groups[group.version]
            batches = list(group.batches)
        net, entry = self.net(group.version)
        whole = predict_batch(net, joined(batches), self._device, entry.version, entry.step)
        return split(whole, batches)
