"""The streamed restore run by the widget's worker: a zarr- or dask-backed layer is restored
chunk by chunk into an OME-Zarr store on disk (the core's :func:`~napari_emdiffuse.streaming.stream_restore`),
so the volume never has to fit in memory. Updates are typed, like the in-memory job's."""
from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ._threading import updates_from
from ._worker import Finished, ModelReady, Progress, RestoreRequest, error_message, load_model_cached


@dataclass(frozen=True)
class StreamRequest(RestoreRequest):
    output: str = ""  # the OME-Zarr store the result is written to
    z_factor: int | None = None  # isotropic reconstruction: output slices per acquired spacing
    scratch: bool = False  # the widget chose ``output``: an older run there with other settings is replaced


@dataclass(frozen=True)
class StoreReady:
    output: str  # created (or kept, to resume): result layers can open it now


@dataclass(frozen=True)
class ChunkWritten:
    region: tuple  # (z, y, x) slices of the output that were just written


def is_lazy(array) -> bool:
    """A zarr or dask array: read on demand, perhaps larger than memory."""
    module = type(array).__module__.split(".")[0]
    return module in ("zarr", "dask")


def scratch_store(layer_name: str, task: str) -> Path:
    """Where a streamed result goes when the user picks no store: a per-layer folder in the
    temporary directory (a re-run with the same settings resumes there)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in layer_name).strip("_") or "image"
    return Path(tempfile.gettempdir()) / "napari-emdiffuse" / f"{safe}-{task}.zarr"


def _produce(image, request: StreamRequest, cancel: threading.Event, put: Callable) -> None:
    from ..streaming import stream_restore
    from ..tiling import Cancelled

    ready = threading.Event()

    def progress(done: int, total: int) -> None:
        if not ready.is_set():  # the first report comes once the store exists
            ready.set()
            put(StoreReady(request.output))
        put(Progress(done, total))

    try:
        model = load_model_cached(request.model, request.task)
        put(ModelReady(model.name, model.task, model.aleatoric, model.uncertainty.get("threshold")))
        stream_restore(image, request.output, model, task=request.task, samples=request.samples,
                       steps=request.steps, sampler=request.sampler, estimate=request.estimate,
                       ensemble=request.ensemble, tile=request.tile, device=request.device,
                       seed=request.seed, threshold=request.threshold, z_factor=request.z_factor,
                       replace_other_runs=request.scratch,
                       progress=progress, on_chunk=lambda chunk: put(ChunkWritten(chunk.region)),
                       cancel=cancel.is_set)
        put(Finished())
    except Cancelled:
        put(Finished(cancelled=True))
    except Exception as e:  # noqa: BLE001 - reported to the user, never lost in the thread
        put(Finished(error=error_message(e, request.device)))


def stream_updates(image, request: StreamRequest, cancel: threading.Event) -> Iterator:
    """Yield ModelReady, StoreReady, Progress (chunks) and ChunkWritten updates, then one
    Finished, for a streamed restore of ``image``. Set ``cancel`` to stop; written chunks stay."""
    yield from updates_from(_produce, (image, request, cancel), cancel, progress=Progress, final=Finished,
                            name="emdiffuse-stream")
