"""The Restore widget: denoise or super-resolve an EM image or stack with a diffusion model, and
inspect where the result can be trusted. Work runs in a worker thread; torch is imported there."""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, RadioButtons
from napari.utils.notifications import show_error, show_info, show_warning

from ..requests import RestoreRequest, SamplingOptions
from ..results import sampling_summary
from ._checks import layer_problem, model_problem
from ._controls import default_spin, heading
from ._environment import Environment, probe
from ._model_picker import ModelPicker
from ._result_store import bind_store, store_field, stream_status
from ._results import ResultLayers, find_results, image_choices, layer_calibration, layer_uid, source_array
from ._run_panel import RunPanel
from ._state import MODEL_DEFAULT, SCOPES, RestoreSettings, RunState, UncertaintyView, bind, task_choices
from ._streamed import StreamedLayers
from ._threading import start_worker, wait_while
from ._uncertainty_panel import TOGGLES, UncertaintyPanel
from ._worker import (ChunkWritten, Finished, ModelReady, Progress, StoreReady, UnitDone, WidgetJob, is_lazy,
                      restore_updates, scratch_store)

if TYPE_CHECKING:
    import napari


ESTIMATE_HELP = {"posterior_mean": "the network's estimate of the mean (sharpest PSNR, no sampling noise)",
                 "sample_mean": "the mean of the diffusion samples (EMDiffuse's)"}


class RestoreWidget(Container):
    """Restore (denoise / super-resolution) with per-pixel uncertainty."""

    def __init__(self, viewer: napari.viewer.Viewer):  # napari passes the viewer (by this annotation)
        self.viewer = viewer
        self.settings, self.run_state, self.view = RestoreSettings(), RunState(), UncertaintyView()
        self.env = Environment()

        self.image = ComboBox(label="image", choices=self._image_choices,
                              tooltip="2D image or Z stack; dask- and zarr-backed layers are read slice by slice")
        self.scope = RadioButtons(label="restore", choices=SCOPES, orientation="horizontal")
        self.store = store_field("layers")
        self.task = ComboBox(label="task", choices=lambda _w: task_choices("restore"))
        self.model = ModelPicker(self.settings)
        self.samples = default_spin("samples", 64, "diffusion samples per pixel; 2 or more also give their spread "
                                    "(the predicted error needs one where the model has an aleatoric head)")
        self.steps = default_spin("steps", 1000, "sampler steps per sample")
        self.sampler = ComboBox(label="sampler", choices=lambda _w: list(self.env.samplers))
        self.estimate = ComboBox(label="estimate", choices=[MODEL_DEFAULT, *ESTIMATE_HELP],
                                 tooltip="; ".join(f"{k}: {v}" for k, v in ESTIMATE_HELP.items()))
        self.ensemble = default_spin("ensemble", 8, "posterior_mean: rotations/flips of the input averaged")
        self.tile = default_spin("tile size", 4096, "tile edge in pixels; smaller tiles use less memory", step=32)
        self.device = ComboBox(label="device", choices=lambda _w: list(self.env.devices))
        self.run = RunPanel(self.run_state)
        self.uncertainty = UncertaintyPanel(viewer, self.view)
        super().__init__(widgets=[
            heading("Input"), self.image, self.scope, self.store,
            heading("Model"), self.task, self.model,
            heading("Sampling (0: the model's default)"), self.samples, self.steps, self.sampler,
            self.estimate, self.ensemble, self.tile, self.device,
            self.run,
            heading("Uncertainty"), self.uncertainty,
        ])
        for name in ("scope", "task", "samples", "steps", "sampler", "estimate", "ensemble", "tile", "device"):
            bind(getattr(self, name), self.settings, name)
        bind_store(self.store, self.settings)
        self.settings.events.task.connect(self._offer_presets)
        self.image.changed.connect(self._follow_source)
        self.run.run_button.changed.connect(self.start)
        self.run.cancel_button.changed.connect(self.cancel)

        self._worker = None
        self._cancel = threading.Event()
        self._results: ResultLayers | StreamedLayers | None = None
        self._outcome: Finished | None = None  # how the current run ended, once it has
        self._threshold_from = None  # the model whose card set the threshold
        self._started = 0.0
        self._follow_source(self.image.value)
        self._probe = self._start_worker(probe, returned=self._set_environment)

    # ---- choices ---------------------------------------------------------------------------------
    def _image_choices(self, _widget=None):
        return image_choices(self.viewer)

    def _set_environment(self, env: Environment) -> None:
        self.env = env
        self.device.reset_choices()
        self.sampler.reset_choices()
        self._offer_presets()
        for problem in env.problems:
            show_warning(problem)

    def _offer_presets(self, *_) -> None:
        self.model.set_presets(self.env.preset_names(self.settings.task))

    def _follow_source(self, layer) -> None:
        """Inspect the results of the chosen image, if it has any; offer slice or stack for a stack,
        and a result store for a lazy (zarr / dask) layer."""
        self.scope.visible = layer is not None and layer.ndim == 3
        self.store.visible = layer is not None and is_lazy(source_array(layer))
        self.uncertainty.set_results(find_results(self.viewer.layers, layer_uid(layer)) if layer else {})

    # ---- running ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.run_state.running

    def start(self) -> None:
        """Check the choices, then restore in a worker thread. Problems become notifications."""
        if self.running:
            return
        layer = self.image.value
        presets = self.env.preset_names(self.settings.task) if self.env.ready else None
        problem = layer_problem(layer) or model_problem(self.settings.model, presets)
        if problem:
            show_error(problem)
            return
        s = self.settings
        options = SamplingOptions(samples=s.samples or None, steps=s.steps or None,
                                  sampler=None if s.sampler == MODEL_DEFAULT else s.sampler, tile=s.tile or None,
                                  estimate=None if s.estimate == MODEL_DEFAULT else s.estimate,
                                  ensemble=s.ensemble or None, device=s.device, seed=s.seed)
        show = {role: getattr(self.view, field) for role, field in TOGGLES.items()}
        alive = lambda: not self._closed()  # noqa: E731
        if self._streams(layer):
            # The store's own mask uses the card's threshold, so a re-run resumes whatever the
            # slider says; the mask layer follows the slider (computed from the std as it is read).
            job = WidgetJob(RestoreRequest(s.task, s.model, options), output=s.store or str(scratch_store(layer.name, s.task)),
                            scratch=not s.store, calibration=layer_calibration(layer))
            self._results = StreamedLayers(self.viewer, layer, lambda: self.view.threshold, show, alive=alive)
        else:
            slices = self._slices(layer)
            job = WidgetJob(RestoreRequest(s.task, s.model, options, threshold=self.view.threshold, units=slices))
            self._results = ResultLayers(self.viewer, layer, slices or [0], lambda: self.view.threshold, show,
                                         on_placed=self._results_placed, alive=alive)
        self._outcome = None
        self._cancel = threading.Event()
        self._started = time.perf_counter()
        self.run_state.update(running=True, cancelling=False, done=0, total=0,
                              status=f"loading {s.model.rsplit('/', 1)[-1]}…")
        self._worker = self._start_worker(restore_updates, source_array(layer), job, self._cancel,
                                          cancel=self._cancel, yielded=self._on_update)

    def cancel(self) -> None:
        """Stop at the next network batch; finished slices stay."""
        if self.running:
            self._cancel.set()
            self.run_state.update(cancelling=True, status="cancelling…")

    def wait(self, timeout: float = 60.0) -> None:
        """Block until the current restore is done, processing Qt events (scripts, tests)."""
        wait_while(lambda: self.running, timeout)

    def _streams(self, layer) -> bool:
        """A lazy layer restored whole streams to disk; its current slice alone is restored in memory."""
        whole = layer.ndim == 2 or self.settings.scope == "whole stack"
        return whole and is_lazy(source_array(layer))

    def _slices(self, layer) -> list[int] | None:
        if layer.ndim == 2:
            return None
        depth = source_array(layer).shape[0]
        if self.settings.scope == "whole stack":
            return list(range(depth))
        z = float(layer.world_to_data(self.viewer.dims.point)[0])
        return [int(np.clip(np.round(z), 0, depth - 1))]

    def _on_update(self, update) -> None:
        if self._closed():  # the viewer was closed mid-run: stop the work, show nothing
            self._cancel.set()
            return
        if isinstance(update, Progress):
            self.run_state.update(done=update.done, total=update.total,
                                  status=self._progress_text(update) if not self.run_state.cancelling else "cancelling…")
        elif isinstance(update, StoreReady):
            self._results.open(update.output, {"model": self.settings.model})
            self.uncertainty.set_results(self._results.layers)
        elif isinstance(update, ChunkWritten):
            self._results.chunk_written()
            self.uncertainty.update_readout()
        elif isinstance(update, ModelReady):
            if update.threshold is not None and self._threshold_from != self.settings.model:
                self._threshold_from = self.settings.model
                self.uncertainty.show_threshold(float(update.threshold))
        elif isinstance(update, UnitDone):
            self._results.add_slice(update.unit, update.result)
            if self._results.placed:
                self.uncertainty.update_readout()
        elif isinstance(update, Finished):
            self._results.finish()
            self._outcome = update
            if self._results.settled:
                self._complete()

    def _results_placed(self, layers: dict) -> None:
        self.uncertainty.set_results(layers)
        if self._outcome is not None:  # the run ended while napari was still building the layers
            self._complete()

    def _progress_text(self, p: Progress) -> str:
        if isinstance(self._results, StreamedLayers):
            return f"chunk {p.done}/{p.total} written"
        done_slices = len(self._results.finished) if self._results else 0
        total_slices = len(self._results.slices) if self._results else 1
        return f"slice {min(done_slices + 1, total_slices)}/{total_slices} · {p.done}/{p.total} tile-steps"

    def _complete(self) -> None:
        """Report how the run ended; the widget is ready for the next one."""
        update = self._outcome
        if isinstance(self._results, StreamedLayers):
            return self._complete_stream(update)
        kept = len(update.units)
        if update.error:
            status = f"failed after {kept} slice(s)" if kept else "failed"
            show_error(update.error)
        elif update.cancelled:
            status = f"cancelled: kept {kept} finished slice(s)"
            show_info(status)
        else:
            status = f"restored {kept} slice(s) in {time.perf_counter() - self._started:.1f} s"
            status += f" · {sampling_summary(self._results.meta)}"
        if self._results.placed:
            self.uncertainty.set_results(self._results.layers)
        self.run_state.update(running=False, cancelling=False, status=status)

    def _complete_stream(self, update: Finished) -> None:
        status = stream_status(update, "restored", self._results.meta.get("output", "the result store"),
                               self._results.chunks, self.run_state.total, self._started)
        self.run_state.update(running=False, cancelling=False, status=status)

    def _closed(self) -> bool:
        try:
            self.native.objectName()
        except RuntimeError:  # "wrapped C/C++ object ... has been deleted"
            return True
        return False

    _start_worker = staticmethod(start_worker)

