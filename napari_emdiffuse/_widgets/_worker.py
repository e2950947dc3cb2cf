"""The restore job a widget's worker thread runs (Restore and Isotropic widgets alike), as a
generator of typed updates: one restore session (:mod:`napari_emdiffuse.restore_session`), in
memory unit by unit or, for a zarr- or dask-backed layer, streamed chunk by chunk into an
OME-Zarr store on disk.

The session runs in a helper thread (:func:`._threading.updates_from`), so the generator can
yield progress while a unit is being sampled, not only between units. Cancelling sets the
session's cancel flag; the core stops at its next network batch (or chunk) and every unit that
finished has already been yielded (or written).
"""
from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Union

from ._threading import updates_from

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WidgetJob:
    """A restore request (``restore_session.RestoreRequest``) and, for a streamed run, the
    OME-Zarr store it writes (``scratch``: the widget chose it, so an older run there with other
    settings is replaced) and the source layer's ``calibration`` (scale, units, translate), which
    the store records."""

    request: Any
    output: str = ""
    scratch: bool = False
    calibration: Any = None


@dataclass(frozen=True)
class Progress:
    done: int  # tile-steps (network evaluations per tile) finished, or chunks when streaming
    total: int


@dataclass(frozen=True)
class ModelReady:
    name: str
    task: str
    aleatoric: bool
    threshold: float | None  # the card's reliability threshold, if it states one


@dataclass(frozen=True)
class UnitDone:
    unit: int  # the source slice (or, for isotropic reconstruction, the gap) just restored
    result: Any  # results.RestoreResult


@dataclass(frozen=True)
class StoreReady:
    output: str  # created (or kept, to resume): result layers can open it now


@dataclass(frozen=True)
class ChunkWritten:
    region: tuple  # (z, y, x) slices of the output that were just written


@dataclass(frozen=True)
class Finished:
    cancelled: bool = False
    error: str | None = None  # one line that says what to do
    units: tuple[int, ...] = field(default=())


Update = Union[Progress, ModelReady, UnitDone, StoreReady, ChunkWritten, Finished]

_cache_lock = threading.Lock()
_cache: dict = {}  # the last model loaded, reused while its files are unchanged


def is_lazy(array) -> bool:
    """A zarr or dask array: read on demand, perhaps larger than memory."""
    module = type(array).__module__.split(".")[0]
    return module in ("zarr", "dask")


def scratch_store(layer_name: str, task: str) -> Path:
    """Where a streamed result goes when the user picks no store: a per-layer folder in the
    temporary directory (a re-run with the same settings resumes there)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in layer_name).strip("_") or "image"
    return Path(tempfile.gettempdir()) / "napari-emdiffuse" / f"{safe}-{task}.zarr"


def _files_stamp(spec: str) -> tuple:
    path = Path(spec).expanduser()
    files = [path] + (sorted(path.iterdir()) if path.is_dir() else [])
    return tuple((str(f), f.stat().st_mtime_ns) for f in files if f.exists())


def load_model_cached(spec: str, task: str):
    from ..loading import load_model  # in the worker thread: torch is imported there

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


def _produce(image, job: WidgetJob, cancel: threading.Event, put: Callable[[Update], None]) -> None:
    from ..restore_session import RestoreSession  # in the worker thread: torch is imported there
    from ..tiling import Cancelled

    finished: list[int] = []
    ready = threading.Event()

    def progress(done: int, total: int) -> None:
        if job.output and not ready.is_set():  # a streamed run reports once its store exists
            ready.set()
            put(StoreReady(job.output))
        put(Progress(done, total))

    try:
        session = RestoreSession(job.request, progress=progress, cancel=cancel.is_set, load=load_model_cached)
        model = session.model
        put(ModelReady(model.name, model.task, model.aleatoric, model.uncertainty.get("threshold")))
        if job.output:
            session.stream(image, job.output, replace_other_runs=job.scratch, calibration=job.calibration,
                           on_chunk=lambda chunk: put(ChunkWritten(chunk.region)))
        else:
            for unit, result in session.units(image):
                finished.append(unit)
                put(UnitDone(unit, result))
                if cancel.is_set():  # a unit that finished just as Cancel was pressed is kept
                    raise Cancelled()
        put(Finished(units=tuple(finished)))
    except Cancelled:
        put(Finished(cancelled=True, units=tuple(finished)))
    except Exception as e:  # noqa: BLE001 - reported to the user, never lost in the thread
        put(Finished(error=error_message(e, job.request.options.device), units=tuple(finished)))


def restore_updates(image, job: WidgetJob, cancel: threading.Event) -> Iterator[Update]:
    """Yield ModelReady, Progress and UnitDone updates (streamed: StoreReady, Progress in chunks,
    ChunkWritten), then one Finished, for a restore of ``image`` (numpy, dask or zarr). Set
    ``cancel`` to stop early; closing the generator cancels too."""
    yield from updates_from(_produce, (image, job, cancel), cancel, progress=Progress, final=Finished,
                            name="emdiffuse-restore")
