"""Streaming restoration on an existing dask.distributed cluster: one task per chunk.

Each task opens the input and the output stores itself and writes its chunk directly, so only
the job description and the model travel: a model given as an object is sent to every worker
once (scattered), a model given by name or path is loaded once per worker process. Results are
identical to a local run (:mod:`.` explains why), whichever worker runs which chunk.
"""
from __future__ import annotations

import functools
import socket
import time
from typing import Callable

from distributed import Client, as_completed, get_worker

from ..loading import load_model
from ..model import RestorationModel
from ..tiling import Cancelled
from .chunks import ChunkDone, StreamJob, open_source, restore_chunk

CONNECT_TIMEOUT = "20s"
IN_FLIGHT_PER_THREAD = 2  # tasks queued per worker thread

__all__ = ["connect", "run_on_cluster"]


def connect(cluster):
    """A Client for a scheduler address (``tcp://host:8786``) or the Client/cluster given."""
    if isinstance(cluster, Client):
        return cluster, False
    address = getattr(cluster, "scheduler_address", cluster)
    try:
        return Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False), True
    except (OSError, TimeoutError, ValueError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"cannot reach the dask scheduler at {address} ({reason}) — start one "
                         "(`dask scheduler`, dask-jobqueue) and pass its address, e.g. tcp://10.0.0.5:8786") from None


@functools.lru_cache(maxsize=2)
def _model_on_worker(reference: str, task: str):
    """A model named by preset, card or path, loaded once per worker process."""
    return load_model(reference, task=task)


@functools.lru_cache(maxsize=4)
def _source_on_worker(source: tuple[str, str | None]):
    return open_source(source)


def _restore_chunk_task(job: StreamJob, index, model) -> ChunkDone:
    """What a worker runs: restore one chunk and write it to the shared output store."""
    if isinstance(model, str):
        model = _model_on_worker(model, job.task)
    done = restore_chunk(job, index, model, _source_on_worker(job.source))
    done.worker = socket.gethostname()
    try:
        done.worker = get_worker().address
    except ValueError:  # not on a worker (a synchronous test client)
        pass
    return done


def run_on_cluster(job: StreamJob, indices, model, cluster, on_chunk: Callable[[ChunkDone], None] | None = None,
                   cancel: Callable[[], bool] | None = None) -> int:
    """Submit one task per chunk in ``indices`` and wait; ``on_chunk`` is called here as each
    finishes. Returns the number of workers that ran chunks. ``model`` is a RestorationModel
    (scattered to the workers) or a name/path each worker loads. Tasks wait in the scheduler
    until workers join (a batch system may start them later)."""
    if job.source is None:
        raise ValueError("a cluster run needs the input as a zarr or TIFF file the workers can read, "
                         "not an in-memory array — save it first (e.g. to .zarr)")
    client, owned = connect(cluster)
    try:
        if isinstance(model, RestorationModel):
            model = client.scatter(model.to("cpu"), broadcast=True, hash=False)
        elif not isinstance(model, str):
            raise TypeError("model must be a RestorationModel or a model name/path")
        pending = iter(indices)
        token = f"{id(job):x}{time.time_ns():x}"
        running = as_completed(loop=client.loop)
        used = set()

        def top_up() -> None:
            """Keep a bounded window of tasks in flight, sized to the workers there are now (they
            may come and go: dask-jobqueue, adaptive clusters), so the scheduler's and this
            process's memory stay flat however many chunks the volume has."""
            target = IN_FLIGHT_PER_THREAD * max(1, sum(client.nthreads().values()))
            while running.count() < target:
                index = next(pending, None)
                if index is None:
                    return
                running.add(client.submit(_restore_chunk_task, job, tuple(index), model, pure=False,
                                          key=f"emdiffuse-chunk-{'.'.join(map(str, index))}-{token}"))

        top_up()
        try:
            for future in running:
                if cancel is not None and cancel():
                    raise Cancelled()
                done = future.result()
                used.add(done.worker)
                top_up()
                if on_chunk is not None:
                    on_chunk(done)
        except BaseException:
            client.cancel(list(running.futures))
            raise
        return len(used)
    finally:
        if owned:
            client.close()
