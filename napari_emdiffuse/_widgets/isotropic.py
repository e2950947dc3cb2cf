"""The Isotropic reconstruction widget: a volume layer in, the isotropic volume out (z scale
divided by the z-factor, so it overlays the input), with its per-voxel uncertainty, a progress
bar and cancel. Work runs in a worker thread; torch is imported there."""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container
from napari.utils.notifications import show_error, show_info, show_warning

from ..requests import RestoreRequest, SamplingOptions
from ._checks import layer_problem, model_problem
from ._controls import default_spin
from ._environment import Environment, probe
from ._isotropic_layers import IsotropicLayers, StreamedIsotropicLayers
from ._model_picker import ModelPicker
from ._result_store import bind_store, store_field, stream_status
from ._results import image_choices, layer_calibration, source_array
from ._run_panel import RunPanel
from ._state import IsotropicSettings, RunState, bind
from ._threading import start_worker, wait_while
from ._worker import (ChunkWritten, Finished, Progress, StoreReady, UnitDone, WidgetJob, is_lazy, restore_updates,
                      scratch_store)

if TYPE_CHECKING:
    import napari

TASK = "isotropic"


class IsotropicWidget(Container):
    """Isotropic reconstruction of an anisotropic volume with per-voxel uncertainty."""

    def __init__(self, viewer: napari.viewer.Viewer):  # noqa: F821 - napari passes the viewer (by this annotation)
        self.viewer = viewer
        self.settings, self.run_state, self.env = IsotropicSettings(), RunState(), Environment()
        self.image = ComboBox(label="volume", choices=self._image_choices,
                              tooltip="an anisotropic (Z, Y, X) stack; the slices between acquired ones are generated")
        self.model = ModelPicker(self.settings)
        self.z_factor = default_spin("z-factor", 64, "output slices per acquired slice spacing (the model's by default)")
        self.samples = default_spin("samples", 64, "diffusion samples per voxel; 2 or more also give their spread "
                                    "(the predicted error needs one where the model has an aleatoric head)")
        self.steps = default_spin("steps", 1000, "sampler steps per sample")
        self.ensemble = default_spin("ensemble", 8, "views of each gap averaged: lateral rotations and both z "
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
        options = SamplingOptions(samples=s.samples or None, steps=s.steps or None, ensemble=s.ensemble or None,
                                  device=s.device, seed=s.seed)
        request = RestoreRequest(TASK, s.model, options, {"z_factor": s.z_factor or None})
        if is_lazy(source_array(layer)):
            job = WidgetJob(request, output=s.store or str(scratch_store(layer.name, TASK)), scratch=not s.store,
                            calibration=layer_calibration(layer))
            self._output = StreamedIsotropicLayers(self.viewer, layer)
        else:
            job = WidgetJob(request)
            self._output = IsotropicLayers(self.viewer, layer)
        self._cancel = threading.Event()
        self._started = time.perf_counter()
        self.run_state.update(running=True, cancelling=False, done=0, total=0,
                              status=f"loading {s.model.rsplit('/', 1)[-1]}…")
        start_worker(restore_updates, source_array(layer), job, self._cancel, cancel=self._cancel,
                     yielded=self._on_update)

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
        elif isinstance(update, UnitDone):
            self._output.add_unit(update.unit, update.result)
        elif isinstance(update, Finished):
            self._finish(update)

    def _finish(self, update: Finished) -> None:
        self._output.finish()
        if isinstance(self._output, StreamedIsotropicLayers):
            return self._finish_stream(update)
        kept = len(update.units)
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
