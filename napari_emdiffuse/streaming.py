"""Restoring volumes larger than memory: chunk by chunk with halos, into OME-Zarr, resumable.

The output is cut into chunks on a fixed lattice (``chunk`` input pixels in Z, Y, X). Each chunk
is restored from its block of the input plus ``halo`` pixels of context on every side in Y and X
(clipped at the volume's edge), with the volume's normaliser and noise seeded by global position
(:mod:`.noise`), and only its own region is kept. So a chunk's result depends on the input, the
model, the settings, the seed and the lattice, and on nothing else: not the order chunks run in,
how chunks are grouped, which process or worker ran them, or whether the run was interrupted
and resumed. Z never matters (slices are independent); a different Y/X lattice changes pixels
near the seams of either lattice slightly (docs/scaling.md gives the measured size).

Every output (mean, std, aleatoric, mask) is an OME-Zarr image next to the others (OUTPUT,
OUTPUT_std, ...: the names the CLI uses), chunked exactly like the lattice, so a chunk is one
stored object per output, written whole. The mean store also holds ``emdiffuse_done``: one
element (and one stored object) per chunk, set to 1 after the chunk's outputs are all written.
A run skips chunks marked done and redoes the others, so a killed run resumes where it stopped
and a chunk is never taken as finished when half-written. The settings that determine the result
are recorded in the mean store's attributes; resuming with other settings is refused.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .stream_store import (DONE, field_dtype, prepare_outputs, input_voxel_size, finished_chunks, ome_metadata,
                           open_result, output_paths, read_ome_scale, result_layer_data, streamed_fields)

DEFAULT_CHUNK = (1, 2048, 2048)
NORMALIZER_PIXELS = 4_000_000  # pixels read to fit the volume's normaliser, at most

__all__ = ["ChunkGrid", "StreamJob", "ChunkDone", "StreamReport", "plan_stream", "restore_chunk",
           "stream_restore", "finished_chunks", "open_result", "result_layer_data", "output_paths",
           "default_halo", "read_ome_scale", "streamed_fields", "ome_metadata"]


# ---- the lattice ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkGrid:
    """Chunks of ``chunk`` input pixels (Z, Y, X) over an input of ``shape`` (Z, Y, X).

    ``scale`` is the output's pixels per input pixel in Y and X (super-resolution); ``z_factor``
    the output's slices per input slice spacing (isotropic reconstruction: a chunk of ``chunk[0]``
    gaps holds ``chunk[0] * z_factor`` output slices). ``halo`` is in input pixels.
    """

    shape: tuple[int, int, int]
    chunk: tuple[int, int, int]
    halo: int
    scale: int = 1
    z_factor: int = 1

    @property
    def isotropic(self) -> bool:
        return self.z_factor > 1

    @property
    def out_shape(self) -> tuple[int, int, int]:
        z, y, x = self.shape
        depth = (z - 1) * self.z_factor + 1 if self.isotropic else z
        return depth, y * self.scale, x * self.scale

    @property
    def out_chunks(self) -> tuple[int, int, int]:
        cz, cy, cx = self.chunk
        return cz * self.z_factor, cy * self.scale, cx * self.scale

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(math.ceil(s / c) for s, c in zip(self.out_shape, self.out_chunks))

    def indices(self) -> list[tuple[int, int, int]]:
        return list(itertools.product(*(range(n) for n in self.grid_shape)))

    def out_region(self, index) -> tuple[slice, slice, slice]:
        """The chunk's region of the output."""
        return tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, self.out_chunks, self.out_shape))

    def lateral(self, index) -> tuple[tuple[slice, slice], tuple[int, int], tuple[slice, slice]]:
        """In Y and X: the input window to read (the chunk plus its halo), the window's origin
        in input pixels, and the chunk's part of the window's result (output pixels)."""
        read, origin, keep = [], [], []
        for i, c, s in zip(index[1:], self.chunk[1:], self.shape[1:]):
            a, b = i * c, min((i + 1) * c, s)
            lo, hi = max(a - self.halo, 0), min(b + self.halo, s)
            read.append(slice(lo, hi))
            origin.append(lo)
            keep.append(slice((a - lo) * self.scale, (b - lo) * self.scale))
        return tuple(read), tuple(origin), tuple(keep)

    def slices(self, index) -> range:
        """Input slices whose results the chunk holds (for isotropic: the gaps it fills)."""
        if not self.isotropic:
            return range(*self.out_region(index)[0].indices(self.shape[0]))
        region = self.out_region(index)[0]
        first = region.start // self.z_factor
        return range(first, min(math.ceil(region.stop / self.z_factor), self.shape[0] - 1))


def default_halo(model, tile: int | None = None, overlap: int | None = None) -> int:
    """Context around each chunk: half a tile, at least the tile overlap plus 32 pixels."""
    t = model.tile
    tile = int(tile or t["size"])
    overlap = int(overlap if overlap is not None else t["overlap"])
    return max(tile // 2, overlap + 32)


# ---- the job ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamJob:
    """Everything a process needs to restore any chunk: plain data, so it pickles to workers.

    ``source`` is the input's location (a zarr or TIFF path, and the array's path inside a zarr
    group) or None when the caller hands the array to each call. ``options`` are
    :func:`restore.restore_slices` keyword arguments.
    """

    source: tuple[str, str | None] | None
    output: str
    task: str
    grid: ChunkGrid
    dtype: str
    fields: tuple[str, ...]
    normalizer: tuple[float, float]
    seed: int
    options: dict = field(default_factory=dict)

    def paths(self) -> dict[str, Path]:
        return output_paths(self.output, self.fields)


@dataclass
class ChunkDone:
    """A finished chunk: its index on the lattice, its region of the output, and its cost."""

    index: tuple[int, int, int]
    region: tuple[slice, slice, slice]
    seconds: float
    worker: str = ""


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


def _zarr_location(array) -> tuple[str, str | None] | None:
    """(store folder, array path) of a zarr array on the local disk, else None."""
    import zarr

    if not isinstance(array, zarr.Array):
        return None
    root = getattr(array.store, "root", None)
    return (str(root), array.path or None) if root is not None else None


def open_source(source: tuple[str, str | None]):
    """The input array at a location from :attr:`StreamJob.source`: zarr lazily, TIFF read whole."""
    import zarr

    from .io import image_format, read_image

    path, inner = source
    if image_format(path) == "zarr":
        return zarr.open_array(path, path=inner, mode="r") if inner else read_image(path)
    return read_image(path)


def _input(image):
    """The image as an array and its location, if workers can open it."""
    if isinstance(image, (str, os.PathLike)):
        from .io import image_format, read_image

        array = read_image(image)
        location = _zarr_location(array) if image_format(image) == "zarr" else (str(image), None)
        return array, location
    return image, _zarr_location(image)


def _volume_normalizer(image, model):
    """The normaliser the in-memory restore would fit, reading at most NORMALIZER_PIXELS pixels:
    when the volume is larger, a 4 x 4 grid of full-resolution crops from each of up to 16 evenly
    spaced slices (full resolution, so a card's ``normalization.bin`` means what it means for a
    whole image)."""
    from .normalize import Normalizer
    from .restore import _fit_normalizer

    planes = 1 if image.ndim == 2 else min(image.shape[0], 16)
    h, w = image.shape[-2:]
    if planes * h * w <= NORMALIZER_PIXELS:
        return _fit_normalizer(image, model)
    side = int(math.sqrt(NORMALIZER_PIXELS / (planes * 16)))
    zs = [None] if image.ndim == 2 else np.linspace(0, image.shape[0] - 1, planes).round().astype(int)
    ys, xs = (np.linspace(0, max(n - side, 0), 4).round().astype(int) for n in (h, w))
    crops = [np.asarray(image[(*(() if z is None else (int(z),)), slice(y, y + side), slice(x, x + side))])
             for z in zs for y in ys for x in xs]
    return Normalizer.for_card(np.stack(crops), model.normalization)


def weights_fingerprint(model) -> str:
    """A hash of the network's weights: resuming with other weights is refused."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.network.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _outputs_for(model, settings, threshold) -> tuple[str, ...]:
    """The result fields restore_slices produces for these settings (see restore.RestoreResult)."""
    fields = ["mean"]
    if settings.samples >= 2:
        fields.append("std")
    if model.aleatoric:
        fields.append("aleatoric")
    thr = float(threshold if threshold is not None else model.uncertainty.get("threshold", np.inf))
    if len(fields) > 1 and np.isfinite(thr):
        fields.append("mask")
    return tuple(fields)


def plan_stream(image, output, model, *, task: str | None = None, chunk=None, halo: int | None = None,
                seed: int = 0, samples=None, steps=None, sampler=None, grid=None, tile=None, overlap=None,
                batch_size=None, device: str = "auto", threshold=None, z_factor: int | None = None,
                estimate: str | None = None, ensemble: int | None = None,
                normalizer=None, voxel_size=None, overwrite: bool = False, replace_other_runs: bool = False):
    """Check the input, fit the volume's normaliser, and create OUTPUT and its siblings (or,
    when they hold an unfinished run with the same settings, keep them to resume).
    ``replace_other_runs``: an emdiffuse run with other settings at OUTPUT is replaced instead of
    refused (for scratch stores the napari widget owns); anything else there is still refused.

    Returns ``(job, array, model)``: the job, the input array and the loaded model.
    """
    import torch

    from .loading import load_model
    from .model import RestorationModel
    from .normalize import Normalizer
    from .restore import Settings, _check_image

    array, location = _input(image)
    _check_image(array)
    if not isinstance(model, RestorationModel):
        model = load_model(model, task=task)
    task = task or model.task
    model.require_task(task)
    settings = Settings.for_model(model, torch.device("cpu"), samples=samples, steps=steps, sampler=sampler,
                                  grid=grid, tile=tile, overlap=overlap, estimate=estimate, ensemble=ensemble)
    shape3 = (1, *array.shape) if array.ndim == 2 else tuple(array.shape)
    scale = int((model.card.get("superres") or {}).get("scale", 2)) if task == "superres" else 1
    if task == "isotropic":
        from .tasks.isotropic import check_volume, resolve_z_factor

        z_factor = resolve_z_factor(model, z_factor)
        check_volume(array, z_factor)
    else:
        z_factor = 1
    chunk = _check_chunk(chunk, shape3)
    halo = default_halo(model, tile, overlap) if halo is None else int(halo)
    if halo < 0:
        raise ValueError(f"halo must be 0 or more pixels, got {halo}")
    grid_ = ChunkGrid(shape3, chunk, halo, scale, z_factor)
    if normalizer is None:
        normalizer = _volume_normalizer(array, model)
    elif not isinstance(normalizer, Normalizer):
        normalizer = Normalizer(*map(float, normalizer))
    options = {"samples": settings.samples, "steps": settings.steps, "sampler": settings.sampler,
               "grid": settings.grid, "tile": settings.tile, "overlap": settings.overlap,
               "batch_size": batch_size, "device": device, "threshold": threshold,
               "estimate": settings.estimate, "ensemble": settings.ensemble}
    fields = _outputs_for(model, settings, threshold)
    job = StreamJob(location, str(output), task, grid_, np.dtype(array.dtype).str, fields,
                    (normalizer.lo, normalizer.hi), int(seed), options)
    manifest = {"version": 1, "task": task, "model": model.name, "weights": weights_fingerprint(model),
                "input_shape": list(array.shape), "dtype": job.dtype, "chunk": list(chunk), "halo": halo,
                "scale": scale, "z_factor": z_factor, "seed": job.seed, "normalizer": list(job.normalizer),
                "settings": {k: v for k, v in asdict(settings).items() if k != "batch_size"},
                "threshold": threshold, "fields": list(fields)}
    manifest = json.loads(json.dumps(manifest))  # what the store will hand back: lists, floats
    units = None
    if voxel_size is None:
        voxel_size, units = input_voxel_size(image)
    prepare_outputs(job, array.ndim, manifest, voxel_size, units, overwrite, replace_other_runs)
    return job, array, model


def _check_chunk(chunk, shape3) -> tuple[int, int, int]:
    if chunk is None:
        chunk = DEFAULT_CHUNK
    chunk = tuple(int(c) for c in (chunk if not isinstance(chunk, int) else (1, chunk, chunk)))
    if len(chunk) == 2:
        chunk = (1, *chunk)
    if len(chunk) != 3:
        raise ValueError(f"chunk must be (Y, X) or (Z, Y, X) pixels, got {chunk}")
    if min(chunk) < 1 or min(chunk[1:]) < 16:
        raise ValueError(f"chunk {chunk} is too small: use at least 16 pixels in Y and X (e.g. --chunk 2048)")
    return tuple(min(c, s) for c, s in zip(chunk, shape3))


# ---- restoring one chunk ----------------------------------------------------------------------
class _LateralWindow:
    """A (Z, Y, X) view of a window of the input in Y and X, read slice by slice on demand."""

    def __init__(self, array, lateral: tuple[slice, slice]):
        self.array, self.lateral = array, lateral
        self.ndim, self.dtype = 3, array.dtype
        z = 1 if array.ndim == 2 else array.shape[0]
        self.shape = (z, *(s.stop - s.start for s in lateral))

    def __getitem__(self, z):
        plane = self.array[self.lateral] if self.array.ndim == 2 else self.array[(z, *self.lateral)]
        return np.asarray(plane)


def _chunk_results(job: StreamJob, index, model, array, cancel) -> Iterator[tuple[range, object]]:
    """(output z range within the chunk, RestoreResult) for each restored piece of the chunk."""
    from .normalize import Normalizer

    grid = job.grid
    read, origin, _ = grid.lateral(index)
    window = _LateralWindow(array, read)
    normalizer = Normalizer(*job.normalizer)
    z0 = grid.out_region(index)[0].start
    if grid.isotropic:
        from .tasks.isotropic import reconstruct_gaps

        f = grid.z_factor
        for z in range(z0, grid.out_region(index)[0].stop, f):  # acquired slices pass through
            yield range(z - z0, z - z0 + 1), _acquired(window[z // f])
        for gap, res in reconstruct_gaps(window, model, z_factor=f, seed=job.seed, cancel=cancel,
                                         gaps=list(grid.slices(index)), normalizer=normalizer,
                                         origin=(0, *origin), **job.options):
            yield range(gap * f + 1 - z0, (gap + 1) * f - z0), res
        return
    from .restore import restore_slices

    zs = grid.slices(index)
    block = np.stack([window[z] for z in zs])
    for z, res in restore_slices(block, model, task=job.task, seed=job.seed, cancel=cancel,
                                 origin=(zs.start, *origin), normalizer=normalizer, **job.options):
        yield range(z, z + 1), res


def _acquired(plane: np.ndarray):
    """An acquired slice in an isotropic output: itself, measured, with no uncertainty."""
    from .restore import RestoreResult

    zeros = np.zeros((1, *plane.shape), dtype=np.float32)
    return RestoreResult(plane[None], zeros, zeros, zeros.astype(np.uint8))


def restore_chunk(job: StreamJob, index, model, array=None, cancel=None) -> ChunkDone:
    """Restore one chunk and write it: every output field, then its done marker.

    ``array`` is the input (opened from ``job.source`` when None); ``model`` a RestorationModel.
    """
    import zarr

    t0 = time.perf_counter()
    index = tuple(int(i) for i in index)
    if array is None:
        array = open_source(job.source)
    grid = job.grid
    region = grid.out_region(index)
    _, _, keep = grid.lateral(index)
    depth = region[0].stop - region[0].start
    lateral_shape = tuple(s.stop - s.start for s in region[1:])
    parts = {f: np.zeros((depth, *lateral_shape), dtype=field_dtype(f, job.dtype)) for f in job.fields}
    for zs, res in _chunk_results(job, index, model, array, cancel):
        for name in job.fields:
            value = getattr(res, name)
            if value is None:
                raise RuntimeError(f"the restore produced no {name} for chunk {index}: settings changed mid-run")
            value = np.asarray(value)
            parts[name][zs.start:zs.stop] = (value if value.ndim == 3 else value[None])[(slice(None), *keep)]
    ndim = len(array.shape)
    out_region = region[-ndim:]
    paths = job.paths()
    for name in (*[f for f in job.fields if f != "mean"], "mean"):  # the mean last, then the marker
        target = zarr.open_array(str(paths[name]), path="0", mode="r+")
        target[out_region] = parts[name] if ndim == 3 else parts[name][0]
    zarr.open_array(str(paths["mean"]), path=DONE, mode="r+")[index] = 1
    return ChunkDone(index, region, time.perf_counter() - t0)


# ---- running a job ----------------------------------------------------------------------------
def stream_restore(image, output, model, *, cluster=None, progress: Callable[[int, int], None] | None = None,
                   on_chunk: Callable[[ChunkDone], None] | None = None, cancel: Callable[[], bool] | None = None,
                   order: str = "lattice", **kwargs) -> StreamReport:
    """Restore ``image`` (a zarr/OME-Zarr or TIFF path, or a zarr, dask or numpy array) chunk by
    chunk into the OME-Zarr store ``output`` (and its _std / _aleatoric / _mask siblings),
    skipping chunks an earlier run finished.

    ``cluster``: None runs here, one chunk after another; a dask.distributed scheduler address
    (``tcp://host:8786``) or Client runs one task per chunk on its workers (the input must then
    be a file both can read). ``progress(done, total)`` counts chunks; ``on_chunk(ChunkDone)`` is
    called as each chunk is written (in this process); ``cancel()`` stops between chunks (and
    within one, locally) with :class:`~napari_emdiffuse.tiling.Cancelled`. ``order`` is
    "lattice" or "reverse" (the result does not depend on it). Other keyword arguments go to
    :func:`plan_stream` (chunk, halo, seed, samples, steps, ..., overwrite).
    """
    from .tiling import Cancelled

    t0 = time.perf_counter()
    job, array, model = plan_stream(image, output, model, **kwargs)
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
        from .distributed import run_on_cluster

        workers = run_on_cluster(job, todo, model, cluster, on_chunk=record, cancel=cancel)
    else:
        workers = 1
        for index in todo:
            if cancel is not None and cancel():
                raise Cancelled()
            record(restore_chunk(job, index, model, array, cancel=cancel))
    return StreamReport(Path(job.output), job.grid.out_shape[-len(array.shape):], total, len(todo),
                        total - len(todo), time.perf_counter() - t0, job.fields,
                        {"workers": workers, "chunk": job.grid.chunk, "halo": job.grid.halo,
                         "normalizer": job.normalizer, "model": model.name, "task": job.task})
