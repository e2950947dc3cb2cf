"""Running a streamed job: every chunk not yet done, here one after another or on a
dask.distributed cluster, with progress per chunk."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..requests import SamplingOptions
from ..tiling import Cancelled
from .chunks import ChunkDone, plan_stream, restore_chunk
from .store import add_pyramids, finished_chunks


@dataclass
class StreamReport:
    output: Path
    shape: tuple[int, ...]
    chunks: int
    computed: int
    skipped: int
    seconds: float
    fields: tuple[str, ...]
    info: dict = field(default_factory=dict)


def stream_restore(image, output, model, *, task: str | None = None, cluster=None,
                   progress: Callable[[int, int], None] | None = None,
                   on_chunk: Callable[[ChunkDone], None] | None = None, cancel: Callable[[], bool] | None = None,
                   order: str = "lattice", scale: int | None = None, z_factor: int | None = None,
                   options: SamplingOptions | None = None, **kwargs) -> StreamReport:
    """Restore ``image`` (a zarr/OME-Zarr or TIFF path, or a zarr, dask or numpy array) chunk by
    chunk into the OME-Zarr store ``output`` (and its siblings: results.OUTPUTS), skipping chunks
    an earlier run finished.

    ``model`` is a RestorationModel or a preset name / path (loaded here; a cluster's workers
    get it once each). ``cluster``: None runs here, one chunk after another; a dask.distributed scheduler
    address (``tcp://host:8786``) or Client runs one task per chunk on its workers (the input must
    then be a file both can read). ``progress(done, total)`` counts chunks; ``on_chunk(ChunkDone)``
    is called as each chunk is written (in this process); ``cancel()`` stops between chunks (and
    within one, locally) with :class:`~napari_emdiffuse.tiling.Cancelled`. ``order`` is "lattice"
    or "reverse" (the result does not depend on it). Sampling options (samples, steps, seed, ...)
    come as keyword arguments or ``options``, as do :func:`plan_stream`'s (chunk, halo,
    threshold, normalizer, calibration, voxel_size, overwrite, replace_other_runs). Once every
    chunk is done, each output gets its pyramid levels.
    """
    t0 = time.perf_counter()
    job, array, loaded = plan_stream(image, output, model, task=task, options=options, scale=scale,
                                     z_factor=z_factor, **kwargs)
    done = finished_chunks(job.output)
    todo = [i for i in job.grid.indices() if not done[i]]
    if order == "reverse":
        todo.reverse()
    total = len(job.grid.indices())
    counter = {"n": int(done.sum())}
    if progress is not None:
        progress(counter["n"], total)

    def record(chunk: ChunkDone) -> None:
        counter["n"] += 1
        if on_chunk is not None:
            on_chunk(chunk)
        if progress is not None:
            progress(counter["n"], total)

    if cluster is not None:
        from .cluster import run_on_cluster  # lazily: dask.distributed is an optional extra

        workers = run_on_cluster(job, todo, loaded, cluster, on_chunk=record, cancel=cancel)
    else:
        workers = 1
        for index in todo:
            if cancel is not None and cancel():
                raise Cancelled()
            record(restore_chunk(job, index, loaded, array, cancel=cancel))
    add_pyramids(job.output, job.fields)
    return StreamReport(Path(job.output), job.grid.out_shape[-len(array.shape):], total, len(todo),
                        total - len(todo), time.perf_counter() - t0, job.fields,
                        {"workers": workers, "chunk": job.grid.chunk, "halo": job.grid.halo,
                         "normalizer": job.normalizer, "model": loaded.name, "task": job.task})
