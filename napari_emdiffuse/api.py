"""The public Python API, which the package re-exports (``from napari_emdiffuse import restore``):
:func:`restore` (a whole result) and :func:`restore_slices` (unit by unit), for every task. A
model given by name or path is loaded, its card's task chosen from the registry, and the one
engine (:mod:`.engine`) runs it."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

from .engine import restore_whole, run
from .loading import load_model
from .model import RestorationModel
from .normalize import Normalizer
from .requests import SamplingOptions
from .results import RestoreResult
from .tasks import get_task
from .tiling import Cancelled

__all__ = ["restore", "restore_slices", "RestoreResult", "SamplingOptions", "Cancelled"]


def _prepare(image, model, task: str | None, options: SamplingOptions | None, option_kwargs: dict):
    if not hasattr(image, "shape"):
        raise ValueError("restore takes an array (numpy, dask or zarr): read the file first "
                         "(e.g. napari_emdiffuse.io.read_image)")
    if not isinstance(model, RestorationModel):
        model = load_model(model, task=task)
    task_ = get_task(task or model.task)
    model.require_task(task_.name)
    if options is None:
        options = SamplingOptions.from_kwargs(**option_kwargs)
    elif option_kwargs:
        options = options.with_(**option_kwargs)
    return model, task_, options


def restore_slices(image, model: RestorationModel | str, *, task: str | None = None,
                   options: SamplingOptions | None = None, scale: int | None = None, z_factor: int | None = None,
                   slices: Sequence[int] | None = None, threshold: float | None = None,
                   origin: tuple[int, int, int] = (0, 0, 0), normalizer: Normalizer | None = None,
                   progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
                   **option_kwargs) -> Iterator[tuple[int, RestoreResult]]:
    """Restore unit by unit, yielding ``(unit, RestoreResult)`` as each finishes: the slices of
    a 2D image (unit 0) or a stack (Z, Y, X), or for isotropic reconstruction the gaps between
    acquired slices (``mean`` of a gap: its f-1 generated slices).

    ``image`` is numpy, dask or zarr (read a slice at a time). Sampling options (samples, steps,
    sampler, grid, estimate, ensemble, tile, overlap, batch_size, precision, device, seed) come as
    keyword arguments or ``options``; None keeps the model card's. ``scale`` / ``z_factor`` are
    checked against a super-resolution / isotropic model's. ``slices`` restricts the work to some
    units. ``progress(done, total)`` counts tile evaluations; ``cancel()`` is polled between
    network batches and raises :class:`Cancelled`. ``origin`` (z, y, x) and ``normalizer`` place
    ``image`` in a larger volume, so it draws the noise the whole volume would (streaming).
    """
    model, task_, options = _prepare(image, model, task, options, option_kwargs)
    params = {k: v for k, v in {"scale": scale, "z_factor": z_factor}.items() if v is not None}
    yield from run(task_, model, image, options, params=params, units=slices, origin=origin,
                   normalizer=normalizer, threshold=threshold, progress=progress, cancel=cancel)


def restore(image, model: RestorationModel | str, *, task: str | None = None,
            options: SamplingOptions | None = None, scale: int | None = None, z_factor: int | None = None,
            **kwargs) -> RestoreResult:
    """Restore a 2D image, a stack or (isotropic reconstruction) a volume as one RestoreResult;
    arguments as :func:`restore_slices`. A stack's result holds the restored slices
    (``info["slices"]``); an isotropic result is the whole (n-1)*f+1-slice volume with the
    acquired slices in place (``info["voxel_scale"]``: multiply the input's voxel size by it).

    On cancel, :class:`Cancelled` is raised with ``partial`` holding what finished.
    """
    option_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in SamplingOptions.__dataclass_fields__}
    model, task_, options = _prepare(image, model, task, options, option_kwargs)
    params = {k: v for k, v in {"scale": scale, "z_factor": z_factor}.items() if v is not None}
    units = kwargs.pop("slices", None)
    return restore_whole(task_, model, image, options, params=params, units=units, **kwargs)
