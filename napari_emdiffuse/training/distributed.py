"""Data-parallel training on several processes: torch.distributed and DistributedDataParallel,
as started by ``torchrun`` (or any launcher that sets its environment: RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). NCCL on CUDA, gloo on the CPU.

Why N processes with batch B take the steps of one process with batch N x B: every process draws
the same global batch (crop positions, augmentations, noise levels and noise) from the same
random streams, crops only its own rows of it (rank r: rows r, r + N, ...) and trains on them;
the gradients of the per-process mean losses are averaged, which is the gradient of the global
batch's mean loss.
Only dropout differs: each process draws from its own stream, and every stream is saved, so a
resumed run continues exactly. Validation splits the fixed validation batch the same way and
reduces its loss and squared error over all processes.

Rank 0 alone writes the run folder. A process that dies or hangs must not leave the others
waiting: every process publishes a heartbeat (count, step, whether it waits for the others) in
the rendezvous store, and a watcher thread stops the process with one line naming the rank that
stopped answering (no heartbeat for a while) or, after ``timeout`` seconds without a finished
step, the rank the others are waiting for.
"""
from __future__ import annotations

import contextlib
import gc
import inspect
import os
import sys
import threading
import time
from datetime import timedelta
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from .world import SingleProcess

DEFAULT_TIMEOUT = 600.0  # seconds without a finished step before the processes give up
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
EXIT_ERROR = 2
VALIDATION = "split across the processes; loss and one-step PSNR reduced over all of them"


class SetupFailed(ValueError):
    """A process could not set up its part of the run; every process raises this, with its reason."""


class ProcessError(ValueError):
    """What only this process met while joining (its machine, its GPU): it says so itself."""


def _device_for(setting: str | None, local_rank: int) -> torch.device:
    """This process's device: the GPU of its local rank on CUDA, else the CPU. A bad setting is
    the same error for every process; a machine without the GPU is this process's own."""
    setting = str(setting or "auto")
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(setting)
    if kind.type == "cpu":
        return kind
    if kind.type != "cuda":
        raise ValueError(f"torch.distributed cannot train on {setting}: use --device cuda or cpu")
    if kind.index is not None:
        raise ValueError("under torchrun each process trains on the GPU of its local rank: give --device cuda "
                         "(or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES")
    if not torch.cuda.is_available():
        raise ProcessError("CUDA was requested but this machine has no CUDA GPU: use --device cpu, or start "
                           "the processes on GPU machines")
    if local_rank >= torch.cuda.device_count():
        raise ProcessError(f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible, so start at "
                           f"most {torch.cuda.device_count()} processes per machine (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


def join(device: str | None = "auto", timeout: float = DEFAULT_TIMEOUT) -> "World":
    """This process's place in the run that the launcher started (its environment says where)."""
    missing = [name for name in LAUNCHER_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(f"{', '.join(missing)} not set: start the processes with torchrun, or with a launcher "
                         "that sets torchrun's environment (see docs/distributed-training.md)")
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        where = _device_for(device, local_rank)
    except ProcessError as e:
        raise ProcessError(f"rank {rank} of {size}: {e}") from None
    backend = "nccl" if where.type == "cuda" else "gloo"
    if where.type == "cuda":
        torch.cuda.set_device(where)
    # The process group waits longer than the watcher, which names the rank that is missing.
    group_timeout = timedelta(seconds=timeout + 60)
    try:
        dist.init_process_group(backend, timeout=group_timeout, device_id=where if backend == "nccl" else None)
        return World(rank, size, where, backend, timeout)
    except (RuntimeError, dist.DistError) as e:
        raise ProcessError(f"rank {rank} of {size} could not join the others at {os.environ['MASTER_ADDR']}:"
                           f"{os.environ['MASTER_PORT']} ({' '.join(str(e).split())[:300]}) — start all of them "
                           "(torchrun --nnodes, --rdzv-endpoint) and check that this machine reaches that "
                           "address") from None


class World(SingleProcess):
    """One process of a data-parallel run (see the module's description)."""

    def __init__(self, rank: int, size: int, device: torch.device, backend: str, timeout: float = DEFAULT_TIMEOUT):
        self.rank, self.size, self.is_main = rank, size, rank == 0
        self._device, self.backend, self.timeout = device, backend, float(timeout)
        self.beat = min(1.0, max(0.2, self.timeout / 20))  # heartbeat period
        self.stale = min(15.0, max(3 * self.beat, self.timeout / 4))  # silence that means a process is gone
        self.advice: Callable[[], str] | None = None  # what to do, appended to a failure message
        self.agreed = False  # every process reported whether it got set up
        self.step = 0
        self._progress_at = time.monotonic()
        self._collectives = 0  # collectives this process is inside (it waits for the others)
        self._launched = self._exchanged = 0  # gradient buckets sent / averaged (DDP)
        self._writing = False
        self._watching_time = False
        self._closed = threading.Event()
        self._failed = threading.Lock()
        self._stderr = sys.stderr
        prefix = f"emdiffuse-heartbeat/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/" \
                 f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self._keys = [f"{prefix}/{r}" for r in range(size)]
        # The launcher's store (torchrun's agent, or rank 0 without torchrun): heartbeats go
        # there, on a connection of their own, so they do not depend on the process group.
        self._store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                    timeout=timedelta(seconds=max(30.0, self.stale)))
        self._store.set(self._keys[rank], "0 0 0")
        self._watcher = threading.Thread(target=self._watch, name="emdiffuse-heartbeat", daemon=True)
        self._watcher.start()

    # ---- what the trainer calls -------------------------------------------------------------
    def device(self, setting: str | None) -> torch.device:
        return self._device

    def dropout_seed(self, seed: int) -> int:
        if self.rank == 0:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1, np.uint64)[0] >> 1)

    def ready(self, error: str | None = None) -> None:
        """Every process says whether it got set up (``error``: why not); if one did not, all of
        them raise :class:`SetupFailed` with its reason, so none waits for it."""
        reports: list[str | None] = [None] * self.size
        with self._waiting():
            dist.all_gather_object(reports, error)
        self.agreed = True
        failed = [(rank, message) for rank, message in enumerate(reports) if message is not None]
        if failed:
            rank, message = failed[0]
            if len({m for _, m in failed}) == 1 and len(failed) == self.size:
                raise SetupFailed(message)
            others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise SetupFailed(f"rank {rank} of {self.size}{others}: {message}")

    def wrap(self, network: torch.nn.Module) -> torch.nn.Module:
        with self._waiting():  # DDP starts by giving every process rank 0's weights
            replica = DistributedDataParallel(network, device_ids=[self._device.index] if self.backend == "nccl" else None)
        replica.register_comm_hook(self, _watched_allreduce)
        return replica

    def accumulating(self, replica: torch.nn.Module, last: bool):
        return contextlib.nullcontext() if last else replica.no_sync()

    def shard(self, rows: int) -> slice:
        return slice(self.rank, None, self.size)

    def draw(self, data, rows: int, rng) -> dict:
        if "rows" in inspect.signature(data.draw).parameters:  # crops only this process's rows
            return data.draw(rows, rng, rows=self.shard(rows))
        batch = data.draw(rows, rng)
        return {key: value[self.shard(rows)] for key, value in batch.items()}

    def at_step(self, step: int) -> None:
        self.step, self._progress_at = step, time.monotonic()
        self._watching_time = True  # from the first step on (setting up takes as long as it takes)

    def mean(self, value: float) -> float:
        return self._sum([value])[0] / self.size

    def mean_over_rows(self, values: list[float], rows: int, total: int) -> list[float]:
        return [v / total for v in self._sum([v * rows for v in values])]

    def any(self, flag: bool) -> bool:
        return self._sum([float(bool(flag))])[0] > 0

    def gather(self, obj) -> list:
        out = [None] * self.size
        with self._waiting():
            dist.all_gather_object(out, obj)
        return out

    @contextlib.contextmanager
    def writing(self):
        self._writing = True
        try:
            yield
        finally:
            self._writing = False

    def describe(self, config) -> dict:
        return {"world_size": self.size, "backend": self.backend, "device": self._device.type,
                "batch_per_process": config.batch_size, "grad_accum": config.grad_accum,
                "global_batch": self.size * config.batch_size * config.grad_accum, "validation": VALIDATION}

    def where(self, device: torch.device) -> str:
        return f"{self.size} processes ({self.backend}, {device.type})"

    # ---- collectives ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _waiting(self):
        self._collectives += 1
        try:
            yield
        finally:
            self._collectives -= 1

    def _sum(self, values: list[float]) -> list[float]:
        on = self._device if self.backend == "nccl" else "cpu"
        tensor = torch.tensor(values, dtype=torch.float64, device=on)
        with self._waiting():
            dist.all_reduce(tensor)
        return tensor.tolist()

    # ---- the end -------------------------------------------------------------------------------
    def close(self, code: int = 0) -> None:
        """After a finished run: wait for every process (rank 0 may still be writing), then leave."""
        try:
            with self._waiting():
                dist.barrier()
        except (RuntimeError, dist.DistError):
            pass  # the run is finished and saved; a process that left early changes nothing
        self._leave(code, finished=True)

    def abandon(self, code: int) -> None:
        """After a failure: leave the process group without waiting for anyone (a broken group
        can hang or abort at exit otherwise)."""
        self._leave(code, finished=False)

    def _leave(self, code: int, finished: bool) -> None:
        """Stop the heartbeat, leave the process group and return with nothing of ours running.
        A thread still inside a torch call when the interpreter shuts down aborts the process
        ("terminate called without an active exception"), so one that does not finish in time
        ends the process here, with ``code``."""
        self._watching_time = False
        self._closed.set()
        self._watcher.join(self.stale + 2 * self.beat)  # a store call takes milliseconds unless stuck
        if finished and not self._watcher.is_alive():
            self._depart()
        gc.collect()  # DDP's hooks go now, while the group and the interpreter are whole
        destroyer = threading.Thread(target=_destroy_group, name="emdiffuse-leave", daemon=True)
        destroyer.start()
        destroyer.join(30 if finished else 10)
        if destroyer.is_alive() or self._watcher.is_alive():
            _flush_and_exit(code)

    def _depart(self) -> None:
        """Say this process has stopped its heartbeat; rank 0, which may hold the store, waits
        for every other to say so, so that none takes the store's end for rank 0's death."""
        with contextlib.suppress(Exception):
            self._store.set(f"{self._keys[self.rank]}/left", "1")
            if self.rank == 0 and self.size > 1:
                others_stop = self.stale + 3 * self.beat  # the others' own bound on stopping, and a beat
                self._store.wait([f"{key}/left" for key in self._keys[1:]], timedelta(seconds=others_stop))

    # ---- the watcher ---------------------------------------------------------------------------
    def await_verdict(self) -> None:
        """Give the watcher the time it needs to tell whether another process died or hangs (it
        then ends this process with that message); return if none did."""
        self._closed.wait(self.stale + 3 * self.beat)

    def _watch(self) -> None:
        seen: dict[int, tuple[str, float, int, bool]] = {}  # rank -> (count, since, step, waiting)
        count = 0
        while not self._closed.wait(self.beat):
            count += 1
            waiting = self._collectives > 0 or self._launched > self._exchanged
            try:
                self._store.set(self._keys[self.rank], f"{count} {self.step} {int(waiting)}")
                values = self._store.multi_get(self._keys) if self._store.check(self._keys) else []
            except Exception as e:  # noqa: BLE001 - any failure of the store ends the same way
                if self._closed.is_set():
                    return
                self._fail(f"lost the rendezvous store at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
                           f"({' '.join(str(e).split())[:200]}): the launcher, or rank 0 that held the store, stopped")
                return
            now = time.monotonic()
            for rank, raw in enumerate(values):
                beat, step, waits = raw.decode().split()
                since = seen[rank][1] if rank in seen and seen[rank][0] == beat else now
                seen[rank] = (beat, since, int(step), waits == "1")
            if self._closed.is_set():
                return
            gone = [r for r, (_, since, _, _) in seen.items() if r != self.rank and now - since > self.stale]
            if gone:
                self._fail(self._gone_message(gone, seen), reporter=min(set(range(self.size)) - set(gone)))
            elif self._watching_time and now - self._progress_at > self.timeout:
                self._fail(self._stalled_message(seen))

    def _gone_message(self, gone: list[int], seen: dict) -> str:
        ranks = ", ".join(map(str, gone))
        step = max(s for _, _, s, _ in seen.values())
        during = f" during step {step}" if step else " before training started"
        return (f"rank{'s' if len(gone) > 1 else ''} {ranks} of {self.size} stopped answering{during} (no heartbeat "
                f"for {self.stale:.0f} s: died, killed or frozen; its own output says why)")

    def _stalled_message(self, seen: dict) -> str:
        step = max(s for _, _, s, _ in seen.values())  # the step the first processes wait in
        busy = sorted(r for r, (_, _, s, waits) in seen.items() if not waits)
        late = sorted(r for r, (_, _, s, _) in seen.items() if s < step)
        stuck = busy if busy and len(busy) < self.size else late
        if stuck:
            ranks = ", ".join(map(str, stuck))
            return (f"rank{'s' if len(stuck) > 1 else ''} {ranks} of {self.size} did not finish step {step} in "
                    f"{self.timeout:.0f} s while the others waited (a hang: see the output of rank {ranks}; "
                    "--dist-timeout sets how long to wait)")
        return (f"no process finished step {step} in {self.timeout:.0f} s, every one waiting for the others (is the "
                "network between the machines down?); --dist-timeout sets how long to wait")

    def _fail(self, message: str, reporter: int = 0) -> None:
        """End this process with ``message`` (printed by one process only), after any
        checkpoint write in progress has finished."""
        if not self._failed.acquire(blocking=False):
            return
        deadline = time.monotonic() + self.timeout
        while self._writing and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.rank == reporter:
            advice = ""
            with contextlib.suppress(Exception):
                advice = f" — {self.advice()}" if self.advice else ""
            print(f"emdiffuse: error: {message}{advice}", file=self._stderr, flush=True)
        _flush_and_exit(EXIT_ERROR)


def _watched_allreduce(world, bucket):  # no annotations: DDP rejects them as strings
    """DDP's own gradient averaging, counted so the heartbeat says when this process waits."""
    world._launched += 1

    def averaged(future):
        world._exchanged += 1
        return future.value()

    return allreduce_hook(None, bucket).then(averaged)


def _destroy_group() -> None:
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
