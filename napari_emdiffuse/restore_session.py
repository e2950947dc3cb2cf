"""One restore as the CLI and the widgets run it (as :mod:`.training.session` is for training):
load and check the model, check the input, run it in memory unit by unit or streamed chunk by
chunk into an OME-Zarr store, report progress, honour a cancel, and write the outputs (the
:data:`~napari_emdiffuse.results.OUTPUTS` table decides names, data types and voxel sizes)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .engine import restore_whole, run
from .io import TIFF_SUFFIXES, ZARR_SUFFIXES, check_image, image_format, read_calibration, write_image
from .loading import load_model
from .model import RestorationModel
from .requests import RestoreRequest
from .results import OUTPUTS, RestoreResult, describe_file, output_dtype, output_paths
from .streaming import StreamReport, stream_restore
from .tasks import get_task
from .tasks.base import Geometry


class RestoreSession:
    """Runs one :class:`RestoreRequest`. ``progress(done, total)`` and ``cancel()`` are passed to
    the engine; ``load(spec, task)`` loads models (the widgets pass a cached loader)."""

    def __init__(self, request: RestoreRequest, *, progress: Callable[[int, int], None] | None = None,
                 cancel: Callable[[], bool] | None = None,
                 load: Callable[[str, str], RestorationModel] = lambda spec, task: load_model(spec, task=task)):
        self.request, self.progress, self.cancel, self._load = request, progress, cancel, load
        self.task = get_task(request.task)
        self._model: RestorationModel | None = None

    # ---- model and input ------------------------------------------------------------------------
    @property
    def model_spec(self) -> str:
        spec = self.request.model or self.task.default_model
        if not spec:
            raise ValueError(f"no default {self.task.name} model is bundled — pass one with --model NAME|PATH")
        return str(spec)

    @property
    def model(self) -> RestorationModel:
        """The model, loaded once and checked to be one of this task."""
        if self._model is None:
            self._model = self._load(self.model_spec, self.task.name)
        return self._model

    @property
    def params(self) -> dict:
        return {k: v for k, v in self.request.params.items() if v is not None}

    @property
    def geometry(self) -> Geometry:
        return self.task.geometry(self.model, **self.params)

    def check(self, image, name: str = "the image") -> None:
        """Refuse an input the task cannot take, in one line that says what to do."""
        check_image(image, name)
        self.task.check_input(tuple(image.shape), self.geometry)

    # ---- running ----------------------------------------------------------------------------------
    def units(self, image) -> Iterator[tuple[int, RestoreResult]]:
        """Restore in memory, yielding each unit's result as it finishes."""
        yield from run(self.task, self.model, image, self.request.options, params=self.params,
                       units=self.request.units, threshold=self.request.threshold, progress=self.progress,
                       cancel=self.cancel)

    def whole(self, image) -> RestoreResult:
        """Restore in memory as one result."""
        return restore_whole(self.task, self.model, image, self.request.options, params=self.params,
                             units=self.request.units, threshold=self.request.threshold, progress=self.progress,
                             cancel=self.cancel)

    def stream(self, image, output, **kwargs) -> StreamReport:
        """Restore chunk by chunk into the OME-Zarr store ``output`` (resuming an unfinished run);
        ``kwargs``: chunk, halo, cluster, on_chunk, calibration, replace_other_runs, ...
        (stream_restore)."""
        if image_format(output) != "zarr":
            raise ValueError(f"streamed runs write OME-Zarr: give the output a .zarr name, not {Path(output).name}")
        return stream_restore(image, output, self.model, task=self.task.name, options=self.request.options,
                              threshold=self.request.threshold, progress=self.progress, cancel=self.cancel,
                              **self.params, **kwargs)

    # ---- writing ------------------------------------------------------------------------------------
    def write(self, result: RestoreResult, output, like: str | os.PathLike | None = None) -> list[Path]:
        """Write the result's fields atomically next to each other (OUTPUT, OUTPUT_std, ...: TIFF,
        or OME-Zarr images laid out as a streamed run's), the restored image in the input's
        dtype, calibrated as the input file ``like`` through the task's geometry: voxel sizes
        scaled, units kept (an input without a calibration gives outputs without one, unless the
        grid changed: then the relative voxel size). Side files go first: an OUTPUT on disk means
        the whole run finished. Returns the paths written."""
        calibration = read_calibration(like) if like is not None else None
        out = None
        if calibration is not None or self.geometry != Geometry():
            out = self.geometry.output_calibration(calibration, np.ndim(result.mean))
        paths = output_paths(output)
        fields = [o.field for o in OUTPUTS if getattr(result, o.field) is not None]
        written = {}
        for name in [f for f in fields if f != "mean"] + ["mean"]:
            value = np.asarray(getattr(result, name))
            if name != "mean":
                value = value.astype(output_dtype(name, value.dtype))
            written[name] = write_image(paths[name], value, calibration=out,
                                        **describe_file(name, output, self.task.name))
        return [written[f] for f in fields]


def check_paths(input_path, output_path) -> tuple[Path, dict[str, Path]]:
    """Known formats, an existing input, and no output (or side output) that would overwrite it
    or be written inside the zarr store it lives in."""
    source, output = Path(input_path), Path(output_path)
    image_format(source)
    if output.suffix.lower() not in (*TIFF_SUFFIXES, *ZARR_SUFFIXES):  # not a path inside a store
        image_format(output.name)
    if not source.exists():
        raise ValueError(f"{source} does not exist — check the INPUT path")
    outputs = output_paths(output)
    resolved_input = source.resolve()
    stores = [p for p in (resolved_input, *resolved_input.parents) if p.suffix.lower() in ZARR_SUFFIXES]
    protected = stores[-1] if stores else resolved_input  # an array inside a store: the whole store
    for path in outputs.values():
        resolved = path.resolve()
        if resolved == protected or protected in resolved.parents:
            where = "overwrite" if protected == resolved_input else f"be written inside {protected.name}, which holds"
            raise ValueError(f"output {path} would {where} the input {source} — choose another OUTPUT name")
    return source, outputs
