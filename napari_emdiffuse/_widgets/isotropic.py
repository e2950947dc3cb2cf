"""The Isotropic reconstruction widget: a volume layer in, the isotropic volume out (z scale
divided by the z-factor, so it overlays the input), with its per-voxel uncertainty, a progress
bar and cancel. Work runs in a worker thread; torch is imported there."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
from magicgui.widgets import ComboBox, Container, SpinBox
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import evented

from ._checks import layer_problem, model_problem
from ._environment import Environment, probe
from ._model_picker import ModelPicker
from ._result_store import bind_store, store_field, stream_status
from ._results import KEY, image_choices, layer_uid, source_array
from ._run_panel import RunPanel
from ._state import MODEL_DEFAULT, RunState, bind
from ._stream_worker import ChunkWritten, StoreReady, StreamRequest, is_lazy, scratch_store, stream_updates
from ._streamed import StoreLayers
from ._threading import start_worker, updates_from, wait_while
from ._worker import Finished, Progress, error_message, load_model_cached

if TYPE_CHECKING:
    import napari

TASK = "isotropic"


@evented
@dataclass
class IsotropicSettings:
    """0 means "the model card's default"."""

    model: str = ""
    z_factor: int = 0
    samples: int = 0
    steps: int = 0
    ensemble: int = 0  # views of each gap averaged (rotations, both z directions)
    device: str = "auto"
    seed: int = 0
    store: str = ""  # OME-Zarr store of a streamed (zarr/dask layer) result; "": a scratch folder


@dataclass(frozen=True)
class GapDone:
    gap: int  # the generated slices lie between acquired slices gap and gap + 1
    result: object  # restore.RestoreResult with (f-1, Y, X) planes


def _produce(volume, settings: dict, cancel: threading.Event, put) -> None:
    from ..tasks.isotropic import reconstruct_gaps
    from ..tiling import Cancelled

    finished: list[int] = []
    try:
        model = load_model_cached(settings["model"], TASK)
        for gap, result in reconstruct_gaps(
                volume, model, z_factor=settings["z_factor"], samples=settings["samples"],
                steps=settings["steps"], ensemble=settings["ensemble"], device=settings["device"],
                seed=settings["seed"], progress=lambda done, total: put(Progress(done, total)), cancel=cancel.is_set):
            finished.append(gap)
            put(GapDone(gap, result))
            if cancel.is_set():
                raise Cancelled()
        put(Finished(slices=tuple(finished)))
    except Cancelled:
        put(Finished(cancelled=True, slices=tuple(finished)))
    except Exception as e:  # noqa: BLE001 - reported to the user, never lost in the thread
        put(Finished(error=error_message(e, settings["device"]), slices=tuple(finished)))


def reconstruct_updates(volume, settings: dict, cancel: threading.Event) -> Iterator[object]:
    """Progress / GapDone updates, then one Finished, from a helper thread (so progress arrives
    while a gap is being sampled); closing the generator cancels the work."""
    yield from updates_from(_produce, (volume, settings, cancel), cancel, progress=Progress, final=Finished,
                            name="emdiffuse-isotropic")


class IsotropicLayers:
    """The output layers: the isotropic volume (acquired slices filled in at once, generated
    ones as their gap finishes) and its std overlay, on the source's grid with z scale / f."""

    def __init__(self, viewer, source):
        self.viewer, self.source = viewer, source
        self.arrays: dict[str, np.ndarray] = {}
        self.layers: dict = {}
        self.z_factor = 0
        self.gaps: list[int] = []

    def add_gap(self, gap: int, result) -> None:
        f = int(result.info["z_factor"])
        if not self.layers:
            self._create(result, f)
        rows = slice(gap * f + 1, (gap + 1) * f)
        self.arrays["isotropic"][rows] = result.mean
        if "std" in self.arrays and result.std is not None:
            self.arrays["std"][rows] = result.std
        self.gaps.append(gap)
        for layer in self.layers.values():
            layer.refresh()

    def _create(self, result, f: int) -> None:
        volume = source_array(self.source)
        n = volume.shape[0]
        depth = (n - 1) * f + 1
        mean = np.zeros((depth, *volume.shape[1:]), dtype=result.mean.dtype)
        for i in range(n):
            mean[i * f] = np.asarray(volume[i])
        self.arrays["isotropic"] = mean
        if result.std is not None:
            self.arrays["std"] = np.zeros(mean.shape, dtype=np.float32)
        self.z_factor = f
        self.layers = add_isotropic_layers(self.viewer, self.source, f, mean, self.arrays.get("std"))

    def finish(self) -> None:
        if "std" in self.layers and self.gaps:
            top = float(np.percentile(self.arrays["std"], 99.5))
            self.layers["std"].contrast_limits = (0.0, max(top, 1e-6))


class StreamedIsotropicLayers(StoreLayers):
    """The output layers of a streamed reconstruction: lazy views of the OME-Zarr store being
    written (acquired and generated slices), refreshed as each chunk is written."""

    def __init__(self, viewer, source):
        super().__init__()
        self.viewer, self.source = viewer, source
        self.z_factor = 0
        self.output = ""

    def open(self, output: str) -> None:
        from ..streaming import result_layer_data, streamed_fields

        self.output = str(output)
        fields = streamed_fields(output)
        mean, meta = result_layer_data(output, "mean")[:2]
        std = result_layer_data(output, "std")[0] if "std" in fields else None
        n = source_array(self.source).shape[0]
        self.z_factor = (mean.shape[0] - 1) // (n - 1)
        self.layers = add_isotropic_layers(self.viewer, self.source, self.z_factor, mean, std)
        if "std" in self.layers:  # still empty: limits from the run's intensity span
            lo, hi = meta["contrast_limits"]
            self.layers["std"].contrast_limits = (0.0, (hi - lo) / 8)


def add_isotropic_layers(viewer, source, z_factor: int, mean, std=None) -> dict:
    """The isotropic volume and its std overlay on the source's grid with z scale / z_factor,
    replacing the source's earlier ones."""
    uid, name = layer_uid(source), source.name
    for layer in list(viewer.layers):
        meta = layer.metadata.get(KEY) or {}
        if meta.get("source") == uid and meta.get("role") in ("isotropic", "isotropic_std"):
            viewer.layers.remove(layer)
    scale = np.asarray(source.scale, dtype=float).copy()
    scale[0] /= z_factor
    common = {"scale": scale, "translate": np.asarray(source.translate, dtype=float),
              "units": source.units, "axis_labels": source.axis_labels}
    layers = {"isotropic": viewer.add_image(
        mean, name=f"{name} isotropic", colormap="gray", contrast_limits=source.contrast_limits,
        metadata={KEY: {"source": uid, "role": "isotropic", "z_factor": z_factor}}, **common)}
    if std is not None:
        layers["std"] = viewer.add_image(
            std, name=f"{name} isotropic uncertainty (std)", colormap="inferno", blending="additive",
            opacity=0.8, metadata={KEY: {"source": uid, "role": "isotropic_std"}}, **common)
    return layers


def _spin(label: str, maximum: int, tooltip: str) -> SpinBox:
    spin = SpinBox(label=label, min=0, max=maximum, tooltip=tooltip)
    spin.native.setSpecialValueText(MODEL_DEFAULT)
    return spin


class IsotropicWidget(Container):
    """Isotropic reconstruction of an anisotropic volume with per-voxel uncertainty."""

    def __init__(self, viewer: napari.viewer.Viewer):  # noqa: F821 - napari passes the viewer (by this annotation)
        self.viewer = viewer
        self.settings, self.run_state, self.env = IsotropicSettings(), RunState(), Environment()
        self.image = ComboBox(label="volume", choices=self._image_choices,
                              tooltip="an anisotropic (Z, Y, X) stack; the slices between acquired ones are generated")
        self.model = ModelPicker(self.settings)
        self.z_factor = _spin("z-factor", 64, "output slices per acquired slice spacing (the model's by default)")
        self.samples = _spin("samples", 64, "diffusion samples per voxel; 2 or more give the uncertainty")
        self.steps = _spin("steps", 1000, "sampler steps per sample")
        self.ensemble = _spin("ensemble", 8, "views of each gap averaged: lateral rotations and both z "
                                             "directions (better, one network evaluation each)")
        self.device = ComboBox(label="device", choices=lambda _w: list(self.env.devices))
        self.store = store_field("volumes")
        self.run = RunPanel(self.run_state)
        self.run.run_button.text = "Reconstruct"
        super().__init__(widgets=[self.image, self.store, self.model, self.z_factor, self.samples, self.steps,
                                  self.ensemble, self.device, self.run])
        for name in ("z_factor", "samples", "steps", "ensemble", "device"):
            bind(getattr(self, name), self.settings, name)
        bind_store(self.store, self.settings)
        self.image.changed.connect(self._follow_source)
        self._follow_source(self.image.value)
        self.run.run_button.changed.connect(self.start)
        self.run.cancel_button.changed.connect(self.cancel)
        self._cancel = threading.Event()
        self._output: IsotropicLayers | StreamedIsotropicLayers | None = None
        self._started = 0.0
        self._probe = start_worker(probe, returned=self._set_environment)

    def _image_choices(self, _widget=None):
        return image_choices(self.viewer)

    def _set_environment(self, env: Environment) -> None:
        self.env = env
        self.device.reset_choices()
        self.model.set_presets(env.preset_names(TASK))
        for problem in env.problems:
            show_warning(problem)

    @property
    def running(self) -> bool:
        return self.run_state.running

    def _follow_source(self, layer) -> None:
        """Offer a result store for a lazy (zarr / dask) volume."""
        self.store.visible = layer is not None and is_lazy(source_array(layer))

    def _problem(self, layer) -> str | None:
        problem = layer_problem(layer)
        if problem:
            return problem
        if layer.ndim != 3 or source_array(layer).shape[0] < 2:
            return (f"'{layer.name}' is not a stack of 2 or more slices: isotropic reconstruction "
                    "generates the slices between acquired ones — choose a volume layer")
        return model_problem(self.settings.model, self.env.preset_names(TASK) if self.env.ready else None)

    def start(self) -> None:
        if self.running:
            return
        layer = self.image.value
        problem = self._problem(layer)
        if problem:
            show_error(problem)
            return
        s = self.settings
        request = {"model": s.model, "z_factor": s.z_factor or None, "samples": s.samples or None,
                   "steps": s.steps or None, "ensemble": s.ensemble or None, "device": s.device, "seed": s.seed}
        if is_lazy(source_array(layer)):
            output = s.store or str(scratch_store(layer.name, TASK))
            request = StreamRequest(**request, task=TASK, output=output, scratch=not s.store)
            self._output, job = StreamedIsotropicLayers(self.viewer, layer), stream_updates
        else:
            self._output, job = IsotropicLayers(self.viewer, layer), reconstruct_updates
        self._cancel = threading.Event()
        self._started = time.perf_counter()
        self.run_state.update(running=True, cancelling=False, done=0, total=0,
                              status=f"loading {s.model.rsplit('/', 1)[-1]}…")
        start_worker(job, source_array(layer), request, self._cancel, cancel=self._cancel, yielded=self._on_update)

    def cancel(self) -> None:
        """Stop at the next network batch; finished gaps stay."""
        if self.running:
            self._cancel.set()
            self.run_state.update(cancelling=True, status="cancelling…")

    def _on_update(self, update) -> None:
        streamed = isinstance(self._output, StreamedIsotropicLayers)
        if isinstance(update, Progress) and streamed:
            status = "cancelling…" if self.run_state.cancelling else f"chunk {update.done}/{update.total} written"
            self.run_state.update(done=update.done, total=update.total, status=status)
        elif isinstance(update, StoreReady):
            self._output.open(update.output)
        elif isinstance(update, ChunkWritten):
            self._output.chunk_written()
        elif isinstance(update, Progress):
            if not self.run_state.cancelling:
                gaps = len(self._output.gaps) if self._output else 0
                self.run_state.update(done=update.done, total=update.total,
                                      status=f"{gaps} gap(s) done · {update.done}/{update.total} tile-steps")
            else:
                self.run_state.update(done=update.done, total=update.total)
        elif isinstance(update, GapDone):
            self._output.add_gap(update.gap, update.result)
        elif isinstance(update, Finished):
            self._finish(update)

    def _finish(self, update: Finished) -> None:
        self._output.finish()
        if isinstance(self._output, StreamedIsotropicLayers):
            return self._finish_stream(update)
        kept = len(update.slices)
        if update.error:
            status = "failed"
            show_error(update.error)
        elif update.cancelled:
            status = f"cancelled: kept {kept} finished gap(s)"
            show_info(status)
        else:
            status = (f"generated {kept} gap(s) x {self._output.z_factor - 1} slices in "
                      f"{time.perf_counter() - self._started:.1f} s")
        self.run_state.update(running=False, cancelling=False, status=status)

    def _finish_stream(self, update: Finished) -> None:
        status = stream_status(update, "reconstructed", self._output.output, self._output.chunks,
                               self.run_state.total, self._started)
        self.run_state.update(running=False, cancelling=False, status=status)

    def wait(self, timeout: float = 60.0) -> None:
        """Block until the current run is done, processing Qt events (scripts, tests)."""
        wait_while(lambda: self.running, timeout)
