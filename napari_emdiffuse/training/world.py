"""How the trainer sees the processes it trains with. :class:`SingleProcess` is one process
alone (the CLI without torchrun, the widget): every hook leaves the run exactly as it was. Its
data-parallel counterpart, built on torch.distributed, is
:class:`napari_emdiffuse.training.distributed.World`, imported only when a launcher asks for it."""
from __future__ import annotations

import contextlib

import torch

from ..device import resolve_device


class SingleProcess:
    """One process trains alone. The methods are the places where several processes differ."""

    rank, size, is_main = 0, 1, True

    def device(self, setting: str | None) -> torch.device:
        """The device this process trains on."""
        return resolve_device(setting)

    def dropout_seed(self, seed: int) -> int:
        """Seed of this process's own dropout stream."""
        return seed

    def ready(self) -> None:
        """Every process got set up (data, model) and is about to train."""

    def wrap(self, network: torch.nn.Module) -> torch.nn.Module:
        """What a training step calls: the network, or its DistributedDataParallel wrapper."""
        return network

    def accumulating(self, replica: torch.nn.Module, last: bool):
        """Context of one micro-batch's forward and backward; gradients are exchanged on the last."""
        return contextlib.nullcontext()

    def shard(self, rows: int) -> slice:
        """The rows of a global batch of ``rows`` this process works on."""
        return slice(None)

    def draw(self, data, rows: int, rng) -> dict:
        """This process's rows of a global batch of ``rows`` drawn from ``data`` with ``rng``."""
        return data.draw(rows, rng)

    def at_step(self, step: int) -> None:
        """Step ``step`` begins (progress that a stalled process is told apart by)."""

    def mean(self, value: float) -> float:
        """The mean of a value over the processes (each computed it on its own shard)."""
        return value

    def mean_over_rows(self, values: list[float], rows: int, total: int) -> list[float]:
        """Means over a batch of ``total`` rows, from each process's means over its ``rows``."""
        return values

    def any(self, flag: bool) -> bool:
        """Whether any process says so (stop and save requests are agreed)."""
        return flag

    def gather(self, obj) -> list:
        """``obj`` of every process, by rank."""
        return [obj]

    def writing(self):
        """Context of a checkpoint write, which must not be cut short."""
        return contextlib.nullcontext()

    def describe(self, config) -> dict | None:
        """The model card's record of the processes that trained (None: one)."""
        return None

    def where(self, device: torch.device) -> str:
        """Where training ran, for messages."""
        return str(device)
