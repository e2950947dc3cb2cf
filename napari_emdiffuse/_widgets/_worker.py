"""The restore job run by the widget's worker thread, as a generator of typed updates.

The compute core runs in a helper thread (:func:`._threading.updates_from`), so the generator
can yield progress while a slice is being sampled, not only between slices. Cancelling sets the
core's cancel flag; the core stops at its next network batch and every slice that finished
has already been yielded.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, Union

from ._threading import updates_from

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestoreRequest:
    """Everything the job needs; None means "the model card's default"."""

    model: str
    task: str
    slices: Sequence[int] | None = None
    samples: int | None = None
    steps: int | None = None
    sampler: str | None = None
    estimate: str | None = None
    ensemble: int | None = None
    tile: int | None = None
    device: str = "auto"
    seed: int = 0
    threshold: float | None = None


@dataclass(frozen=True)
class Progress:
    done: int  # tile-steps (network evaluations per tile) finished
    total: int


@dataclass(frozen=True)
class ModelReady:
    name: str
    task: str
    aleatoric: bool
    threshold: float | None  # the card's reliability threshold, if it states one


@dataclass(frozen=True)
class SliceDone:
    z: int  # index in the source stack (0 for a 2D image)
    result: Any  # restore.RestoreResult


@dataclass(frozen=True)
class Finished:
    cancelled: bool = False
    error: str | None = None  # one line that says what to do
    slices: tuple[int, ...] = field(default=())


Update = Union[Progress, ModelReady, SliceDone, Finished]

_cache_lock = threading.Lock()
_cache: dict = {}  # the last model loaded, reused while its files are unchanged


def _files_stamp(spec: str) -> tuple:
    path = Path(spec).expanduser()
    files = [path] + (sorted(path.iterdir()) if path.is_dir() else [])
    return tuple((str(f), f.stat().st_mtime_ns) for f in files if f.exists())


def load_model_cached(spec: str, task: str):
    from ..loading import load_model

    key = (spec, task, _files_stamp(spec))
    with _cache_lock:
        if _cache.get("key") != key:
            _cache.clear()
            _cache.update(key=key, model=load_model(spec, task=task))
        return _cache["model"]


def error_message(error: BaseException, device: str) -> str:
    """One line for the user. Our own errors already say what to do; others get a hint."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return f"out of memory on {device}: lower the tile size, or restore the current slice only"
    if isinstance(error, (ValueError, FileNotFoundError)):
        return str(error)
    logger.exception("restore failed", exc_info=error)
    return f"restore failed ({type(error).__name__}: {error}) — the traceback is in the terminal"


def _produce(image, request: RestoreRequest, cancel: threading.Event, put: Callable[[Update], None]) -> None:
    from ..restore import Cancelled, restore_slices

    finished = []
    try:
        model = load_model_cached(request.model, request.task)
        threshold = model.uncertainty.get("threshold")
        put(ModelReady(model.name, model.task, model.aleatoric, threshold))
        for z, result in restore_slices(
            image, model, task=request.task, samples=request.samples, steps=request.steps,
            sampler=request.sampler, estimate=request.estimate, ensemble=request.ensemble, tile=request.tile,
            device=request.device, seed=request.seed, threshold=request.threshold, slices=request.slices,
            progress=lambda done, total: put(Progress(done, total)), cancel=cancel.is_set,
        ):
            finished.append(z)
            put(SliceDone(z, result))
            if cancel.is_set():  # a slice that finished just as Cancel was pressed is kept
                raise Cancelled()
        put(Finished(slices=tuple(finished)))
    except Cancelled:
        put(Finished(cancelled=True, slices=tuple(finished)))
    except Exception as e:  # noqa: BLE001 - reported to the user, never lost in the thread
        put(Finished(error=error_message(e, request.device), slices=tuple(finished)))


def restore_updates(image, request: RestoreRequest, cancel: threading.Event) -> Iterator[Update]:
    """Yield Progress / ModelReady / SliceDone updates, then one Finished, for a restore of
    ``image`` (2D or a stack; numpy, dask or zarr). Set ``cancel`` to stop early."""
    yield from updates_from(_produce, (image, request, cancel), cancel, progress=Progress, final=Finished,
                            name="emdiffuse-restore")
