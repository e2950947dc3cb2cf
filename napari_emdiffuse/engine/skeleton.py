"""The one inference engine: for any task, an input (numpy, dask or zarr; read a slice at a time)
is normalised, cut into the task's units, each unit sampled by the tiled sampler, its estimate
averaged over the task's ensemble views, its uncertainty computed, and the result handed back
unit by unit. Tasks (:mod:`..tasks`) only say what differs."""
from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

import numpy as np

from ..device import resolve_device
from ..normalize import Normalizer, to_dtype
from ..requests import SamplingOptions
from ..results import RestoreResult
from ..tasks.base import Task, Unit
from ..tiling import Cancelled
from ..uncertainty import (aleatoric_std, calibration_for, mask_field, predicted_error, reliability_mask, sample_std,
                           validation_check)
from .options import Settings
from .sampling import Sampled, prepare_network, sample_unit, unit_tiles, view_estimate

Progress = Callable[[int, int], None] | None
Cancel = Callable[[], bool] | None
NORMALIZER_SLICES = 16  # slices of a stack read to fit its normaliser


def fit_normalizer(image, model) -> Normalizer:
    """The model card's normalisation fitted on the input (a stack: on a few evenly spaced slices,
    so a lazy volume is not read whole)."""
    if image.ndim == 3 and image.shape[0] > NORMALIZER_SLICES:
        picks = np.linspace(0, image.shape[0] - 1, NORMALIZER_SLICES).round().astype(int)
        image = np.stack([np.asarray(image[int(z)]) for z in picks])
    return Normalizer.for_card(np.asarray(image), model.normalization)


class PlaneReader:
    """Normalised slices of the input, read on demand; the last two are kept (a gap reads slices
    z and z+1, the next gap z+1 again)."""

    def __init__(self, image, normalizer: Normalizer):
        self.image, self.normalizer = image, normalizer
        self.cache: dict[int, np.ndarray] = {}

    def __call__(self, z: int) -> np.ndarray:
        if z not in self.cache:
            for old in [k for k in self.cache if k < z - 1]:
                del self.cache[old]
            plane = self.image if self.image.ndim == 2 else self.image[z]
            self.cache[z] = self.normalizer(np.asarray(plane))
        return self.cache[z]


class Counter:
    """Tile evaluations done of the run's total, reported to ``progress(done, total)``."""

    def __init__(self, progress: Progress):
        self.progress, self.done, self.total = progress, 0, 0

    def __call__(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


def unit_cost(task: Task, model, unit: Unit, settings: Settings, views: int) -> int:
    """Tile evaluations of one unit: every state at every step, then one per view and plane."""
    shape = unit.condition.shape[-2:]
    cost = unit_tiles(shape, settings, model) * len(unit.streams) * settings.evaluations
    return cost + sum(unit_tiles(task.view_shape(shape, v), settings, model) * unit.planes for v in range(1, views))


def run(task: Task, model, image, options: SamplingOptions | None = None, *, params: dict | None = None,
        units: Sequence[int] | None = None, origin: tuple[int, int, int] = (0, 0, 0),
        normalizer: Normalizer | None = None, threshold: float | None = None, progress: Progress = None,
        cancel: Cancel = None) -> Iterator[tuple[int, RestoreResult]]:
    """Restore ``image`` with an already-loaded ``model`` of ``task``, yielding ``(unit,
    RestoreResult)`` as each unit (a slice, or a gap for isotropic reconstruction) finishes.

    ``params`` are the task's parameters (e.g. ``z_factor``); ``units`` restricts the work;
    ``origin`` (z, y, x) places ``image`` in a larger volume and ``normalizer`` is one fitted on
    that volume, so a block restored with both draws the noise the whole volume would
    (streaming). ``progress(done, total)`` counts tile evaluations; ``cancel()`` is polled between
    network batches and raises :class:`~napari_emdiffuse.tiling.Cancelled`.
    """
    options = options or SamplingOptions()
    device = resolve_device(options.device)
    if model.task != task.name:
        model.require_task(task.name)
    geometry = task.geometry(model, **(params or {}))
    task.check_input(tuple(image.shape), geometry)
    prepare_network(model, device)
    settings = Settings.resolve(model, device, options)
    normalizer = normalizer if normalizer is not None else fit_normalizer(image, model)
    thr = float(threshold if threshold is not None else model.uncertainty.get("threshold", np.inf))
    todo = list(units if units is not None else task.units(tuple(image.shape), geometry))
    read = PlaneReader(image, normalizer)
    counter = Counter(progress)
    lateral = (origin[1] * geometry.scale, origin[2] * geometry.scale)
    for index in todo:
        t0 = time.perf_counter()
        unit = task.unit(model, read, index, geometry, settings.samples, origin[0])
        views = [unit] + list(task.views(model, unit, settings.views))
        if not counter.total:
            counter.total = unit_cost(task, model, unit, settings, len(views)) * len(todo)
        sampled = sample_unit(model, unit, settings, seed=options.seed, origin=lateral, device=device,
                              on_batch=counter, cancel=cancel)
        if len(views) > 1:
            estimates = [sampled.first.mean(axis=1, keepdims=True)]
            estimates += [view_estimate(model, v, settings, seed=options.seed, device=device, on_batch=counter,
                                        cancel=cancel) for v in views[1:]]
            sampled.first = np.mean(estimates, axis=0)
        result = summarize(task, sampled, settings, normalizer, image.dtype, thr, model.uncertainty)
        on_input_grid = task.unit_is_plane and geometry.scale == 1  # residuals of a denoiser-like task
        result.info["validation"] = validation_check(
            result.uncertainty, normalizer.hi - normalizer.lo, model.uncertainty,
            normalizer.inverse(read(index)) if on_input_grid else None, result.mean if on_input_grid else None)
        result.info.update(task.info(model, index, geometry), seconds=time.perf_counter() - t0, device=str(device),
                           samples=settings.samples, steps=settings.steps_run, sampler=settings.sampler,
                           estimate=settings.estimate, ensemble=len(views), evaluations=settings.evaluations,
                           tile=settings.tile, batch_size=settings.batch_size, threshold=thr, model=model.name,
                           normalizer=(normalizer.lo, normalizer.hi), task=task.name)
        yield index, result


def summarize(task: Task, sampled: Sampled, settings: Settings, normalizer: Normalizer, dtype,
              threshold: float, card_uncertainty: dict | None = None) -> RestoreResult:
    """A unit's restored planes in the input's dtype and its uncertainty in intensity units: the
    sample spread, the aleatoric std, the predicted error (calibrated by the card) and the mask."""
    span = normalizer.hi - normalizer.lo
    estimate = sampled.samples if settings.estimate == "sample_mean" else sampled.first
    mean = to_dtype(normalizer.inverse(estimate.mean(axis=1)), dtype)
    std = None
    if settings.samples > 1:
        std = np.stack([sample_std(s) for s in sampled.samples]) * (span / 2)
    ale = None
    if sampled.logvar is not None:
        ale = np.stack([aleatoric_std(lv) for lv in sampled.logvar]) * (span / 2)
    predicted = predicted_error(std, ale, calibration_for(card_uncertainty)) if std is not None or ale is not None else None
    basis_field = mask_field(card_uncertainty, std is not None)
    basis = {"std": std, "aleatoric": ale, "uncertainty": predicted}[basis_field]
    mask = None if basis is None or not np.isfinite(threshold) else reliability_mask(basis, span, threshold)
    parts = [mean, std, ale, mask, predicted]
    if task.unit_is_plane:
        parts = [None if p is None else p[0] for p in parts]
    return RestoreResult(*parts, info={"mask_basis": basis_field if mask is not None else None})


def restore_whole(task: Task, model, image, options: SamplingOptions | None = None, *,
                  params: dict | None = None, **kwargs) -> RestoreResult:
    """The whole result of :func:`run` as one RestoreResult (:meth:`Task.assemble`). On cancel,
    :class:`~napari_emdiffuse.tiling.Cancelled` carries the finished part in ``partial``."""
    t0 = time.perf_counter()
    finished: list[tuple[int, RestoreResult]] = []
    try:
        for index, result in run(task, model, image, options, params=params, **kwargs):
            finished.append((index, result))
    except Cancelled as exc:
        if finished:
            exc.partial = _assembled(task, model, image, finished, params, t0)
        raise
    if not finished:
        raise ValueError("nothing to restore: the input has no unit to restore (a volume needs at least 2 "
                         "slices for isotropic reconstruction)")
    return _assembled(task, model, image, finished, params, t0)


def _assembled(task, model, image, finished, params, t0) -> RestoreResult:
    result = task.assemble(image, finished, task.geometry(model, **(params or {})))
    result.info["seconds"] = time.perf_counter() - t0
    checks = [r.info.get("validation") for _, r in finished if r.info.get("validation")]
    if checks:  # the whole result is beyond validation if any unit is
        result.info["validation"] = next((c for c in checks if c["beyond"]), checks[0])
    return result


__all__ = ["run", "restore_whole", "fit_normalizer", "summarize", "PlaneReader"]
