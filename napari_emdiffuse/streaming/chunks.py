"""A streamed run's job and its chunks: planning (check the input, fit the volume's normaliser,
create or resume the result store) and restoring one chunk through the engine into the store.

Each chunk is restored from its block of the input plus ``halo`` pixels of context in Y and X,
with the volume's normaliser and noise seeded by global position (:mod:`..noise`), and only its
own region is kept; so its result does not depend on the order chunks run in, which process ran
them, or whether the run was interrupted and resumed (:mod:`.` explains the rest).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import zarr

from ..calibration import Calibration
from ..engine import Settings, fit_normalizer, run
from ..io import check_image, image_format, read_image
from ..loading import load_model
from ..model import RestorationModel
from ..normalize import Normalizer
from ..requests import SamplingOptions
from ..results import FIELDS, RestoreResult, acquired_value, output_dtype, output_paths
from ..tasks import get_task
from ..tasks.base import Task
from ..uncertainty import has_predicted_error, mask_field
from .lattice import ChunkGrid
from .store import DONE, input_calibration, prepare_outputs

DEFAULT_CHUNK = (1, 2048, 2048)
NORMALIZER_PIXELS = 4_000_000  # pixels read to fit the volume's normaliser, at most


@dataclass(frozen=True)
class StreamJob:
    """Everything a process needs to restore any chunk: plain data, so it pickles to workers.

    ``source`` is the input's location (a zarr or TIFF path, and the array's path inside a zarr
    group) or None when the caller hands the array to each call; ``params`` the task's
    parameters; ``options`` the sampling options; ``threshold`` the reliability threshold (None:
    the card's).
    """

    source: tuple[str, str | None] | None
    output: str
    task: str
    grid: ChunkGrid
    dtype: str
    fields: tuple[str, ...]
    normalizer: tuple[float, float]
    options: SamplingOptions
    params: dict
    threshold: float | None = None

    def paths(self) -> dict[str, Path]:
        return output_paths(self.output, self.fields)


@dataclass
class ChunkDone:
    """A finished chunk: its index on the lattice, its region of the output, and its cost."""

    index: tuple[int, int, int]
    region: tuple[slice, slice, slice]
    seconds: float
    worker: str = ""


def default_halo(model, tile: int | None = None, overlap: int | None = None) -> int:
    """Context around each chunk: half a tile, at least the tile overlap plus 32 pixels."""
    t = model.tile
    tile = int(tile or t["size"])
    overlap = int(overlap if overlap is not None else t["overlap"])
    return max(tile // 2, overlap + 32)


def _zarr_location(array) -> tuple[str, str | None] | None:
    """(store folder, array path) of a zarr array on the local disk, else None."""
    if not isinstance(array, zarr.Array):
        return None
    root = getattr(array.store, "root", None)
    return (str(root), array.path or None) if root is not None else None


def open_source(source: tuple[str, str | None]):
    """The input array at a location from :attr:`StreamJob.source`: zarr lazily, TIFF read whole."""
    path, inner = source
    if image_format(path) == "zarr":
        return zarr.open_array(path, path=inner, mode="r") if inner else read_image(path)
    return read_image(path)


def _input(image):
    """The image as an array and its location, if workers can open it."""
    if isinstance(image, (str, os.PathLike)):
        array = read_image(image)
        location = _zarr_location(array) if image_format(image) == "zarr" else (str(image), None)
        return array, location
    return image, _zarr_location(image)


def volume_normalizer(image, model) -> Normalizer:
    """The normaliser the in-memory restore would fit, reading at most NORMALIZER_PIXELS pixels:
    when the volume is larger, a 4 x 4 grid of full-resolution crops from each of up to 16 evenly
    spaced slices (full resolution, so a card's ``normalization.bin`` means what it means for a
    whole image)."""
    planes = 1 if image.ndim == 2 else min(image.shape[0], 16)
    h, w = image.shape[-2:]
    if planes * h * w <= NORMALIZER_PIXELS:
        return fit_normalizer(image, model)
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


def result_fields(model, settings: Settings, threshold: float | None) -> tuple[str, ...]:
    """The output fields a restore makes with these settings (see results.OUTPUTS)."""
    fields = ["mean"]
    if settings.samples >= 2:
        fields.append("std")
    if model.aleatoric:
        fields.append("aleatoric")
    if len(fields) > 1 and has_predicted_error(model.uncertainty, "std" in fields, "aleatoric" in fields):
        fields.append("uncertainty")
    thr = float(threshold if threshold is not None else model.uncertainty.get("threshold", np.inf))
    if mask_field(model.uncertainty, "std" in fields) in fields and np.isfinite(thr):
        fields.append("mask")
    return tuple(f for f in FIELDS if f in fields)


def check_chunk(chunk, shape3) -> tuple[int, int, int]:
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


def plan_stream(image, output, model: RestorationModel | str, *, task: str | None = None,
                options: SamplingOptions | None = None, scale: int | None = None, z_factor: int | None = None,
                chunk=None, halo: int | None = None, threshold: float | None = None, normalizer=None,
                voxel_size=None, calibration: Calibration | None = None, overwrite: bool = False,
                replace_other_runs: bool = False,
                **sampling) -> tuple[StreamJob, object, RestorationModel]:
    """Check the input, fit the volume's normaliser, and create OUTPUT and its siblings (or,
    when they hold an unfinished run with the same settings, keep them to resume).
    ``replace_other_runs``: an emdiffuse run with other settings at OUTPUT is replaced instead of
    refused (for scratch stores the napari widget owns); anything else there is still refused.
    Sampling options come as keyword arguments (samples, steps, seed, ...) or ``options``. The
    outputs' voxel size, units and origin follow from the input's ``calibration`` (e.g. a napari
    layer's scale, units and translate), else a unit-less ``voxel_size``, else an input path's
    metadata.

    Returns ``(job, array, model)``: the job, the input array and the loaded model.
    """
    array, location = _input(image)
    check_image(array)
    if not isinstance(model, RestorationModel):
        model = load_model(model, task=task)
    task_ = get_task(task or model.task)
    model.require_task(task_.name)
    options = (options or SamplingOptions()).with_(**{k: v for k, v in sampling.items() if v is not None})
    params = {k: v for k, v in {"scale": scale, "z_factor": z_factor}.items() if v is not None}
    geometry = task_.geometry(model, **params)
    task_.check_input(tuple(array.shape), geometry)
    settings = Settings.resolve(model, torch.device("cpu"), options)
    shape3 = (1, *array.shape) if array.ndim == 2 else tuple(array.shape)
    chunk = check_chunk(chunk, shape3)
    halo = default_halo(model, options.tile, options.overlap) if halo is None else int(halo)
    if halo < 0:
        raise ValueError(f"halo must be 0 or more pixels, got {halo}")
    grid = ChunkGrid.for_task(task_, shape3, chunk, halo, geometry)
    if normalizer is None:
        normalizer = volume_normalizer(array, model)
    elif not isinstance(normalizer, Normalizer):
        normalizer = Normalizer(*map(float, normalizer))
    fields = result_fields(model, settings, threshold)
    job = StreamJob(location, str(output), task_.name, grid, np.dtype(array.dtype).str, fields,
                    (normalizer.lo, normalizer.hi), options, params, threshold)
    manifest = {"version": 1, "task": task_.name, "model": model.name, "weights": weights_fingerprint(model),
                "input_shape": list(array.shape), "dtype": job.dtype, "chunk": list(chunk), "halo": halo,
                "scale": geometry.scale, "z_factor": geometry.z_factor, "seed": options.seed,
                "normalizer": list(job.normalizer),
                "settings": {k: v for k, v in asdict(settings).items() if k != "batch_size"},
                "threshold": threshold, "fields": list(fields),
                "mask_basis": mask_field(model.uncertainty, "std" in fields) if "mask" in fields else None}
    manifest = json.loads(json.dumps(manifest))  # what the store will hand back: lists, floats
    if calibration is None:
        calibration = Calibration.of(voxel_size) if voxel_size is not None else input_calibration(image)
    prepare_outputs(job.output, fields, grid, array.ndim, job.dtype, manifest, calibration, overwrite,
                    replace_other_runs)
    return job, array, model


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


def _chunk_results(job: StreamJob, task: Task, index, model, array, cancel) -> Iterator[tuple[range, RestoreResult]]:
    """(output z range within the chunk, RestoreResult) for each part of the chunk: slices passed
    through from the input (isotropic reconstruction's acquired slices), then restored units."""
    grid = job.grid
    read, origin, _ = grid.lateral(index)
    window = _LateralWindow(array, read)
    region = grid.out_region(index)[0]
    geometry = grid.geometry
    for z, source_z in task.passthrough(range(region.start, region.stop), geometry):
        plane = window[source_z]
        yield range(z - region.start, z - region.start + 1), RestoreResult(
            **{f: acquired_value(f, plane)[None] for f in job.fields})
    for unit, result in run(task, model, window, job.options, params=job.params, units=grid.units(task, index),
                            origin=(0, *origin), normalizer=Normalizer(*job.normalizer), threshold=job.threshold,
                            cancel=cancel):
        planes = task.out_planes(unit, geometry)
        yield range(planes.start - region.start, planes.stop - region.start), result


def restore_chunk(job: StreamJob, index, model, array=None, cancel=None) -> ChunkDone:
    """Restore one chunk and write it: every output field, then its done marker.

    ``array`` is the input (opened from ``job.source`` when None); ``model`` a RestorationModel.
    """
    t0 = time.perf_counter()
    index = tuple(int(i) for i in index)
    if array is None:
        array = open_source(job.source)
    task = get_task(job.task)
    grid = job.grid
    region = grid.out_region(index)
    _, _, keep = grid.lateral(index)
    depth = region[0].stop - region[0].start
    lateral_shape = tuple(s.stop - s.start for s in region[1:])
    parts = {f: np.zeros((depth, *lateral_shape), dtype=output_dtype(f, job.dtype)) for f in job.fields}
    for zs, res in _chunk_results(job, task, index, model, array, cancel):
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
