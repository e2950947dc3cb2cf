"""The Training widget: train or fine-tune a model on your own layers or files, with a live loss
plot and a validation preview layer; Stop, Resume and Save. Training runs in a worker thread (the
viewer stays responsive); torch is imported there. The run folder it writes is a model the
Restore widget, the CLI and ``load_model`` all take."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar,
                              PushButton, RadioButtons, SpinBox)
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt

from ..training.presets import PRESETS, SUGGESTED
from ._environment import Environment
from ._model_picker import ModelPicker
from ._state import bind
from ._threading import start_worker, wait_while
from .training_plot import LossPlot
from .training_state import FINE_TUNE, NEW, SOURCES, TASKS, TrainingRun, TrainingSettings
from .training_worker import (Finished, Started, TrainRequest, probe_for_training, registration_summary,
                              train_updates)

if TYPE_CHECKING:
    import napari

PREVIEW_LAYER = "training preview (input | estimate | target)"
IMAGE_FILTER = "Images (*.tif *.tiff *.zarr)"
# The inputs each task needs: (key of the data builder, label); layers and files alike.
INPUTS = {
    "denoise": (("noisy", "noisy image"), ("clean", "clean image")),
    "superres": (("high_res", "high-res image"),),
    "isotropic": (("volume", "volume"),),
}


def _heading(text: str) -> Label:
    label = Label(value=f"<b>{text}</b>")
    label.native.setTextFormat(Qt.TextFormat.RichText)  # PyQt6 takes the enum, not an int
    return label


def default_run_dir(task: str) -> str:
    return str(Path.home() / "emdiffuse-runs" / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}")


def preview_strip(update) -> np.ndarray:
    """The validation crop's input, the model's estimate and the target, side by side."""
    panels = [update.extra.get("preview_input"), update.preview, update.extra.get("preview_target")]
    panels = [np.asarray(p, dtype=np.float32) for p in panels if p is not None]
    gap = np.full((panels[0].shape[0], 2), np.nan, dtype=np.float32)
    strip = [panels[0]]
    for panel in panels[1:]:
        strip += [gap, panel]
    return np.concatenate(strip, axis=1)


class TrainingWidget(Container):
    """Train or fine-tune a denoising, super-resolution or isotropic model on your own data."""

    def __init__(self, viewer: napari.viewer.Viewer):  # napari passes the viewer (by this annotation)
        self.viewer = viewer
        self.settings, self.run_state = TrainingSettings(), TrainingRun()
        self.env = Environment()

        # ---- data
        self.task = ComboBox(label="task", choices=list(TASKS.items()))
        self.source = RadioButtons(label="from", choices=SOURCES, orientation="horizontal")
        self.layer_pickers = {key: ComboBox(label=label, choices=self._image_choices, nullable=True)
                              for key, label in {k: l for pairs in INPUTS.values() for k, l in pairs}.items()}
        self.file_pickers = {key: FileEdit(label=label, mode="r", filter=IMAGE_FILTER)
                             for key, label in {k: l for pairs in INPUTS.values() for k, l in pairs}.items()}
        self.register = CheckBox(text="align misregistered pairs",
                                 tooltip="a pair found misregistered is aligned before training: a global shift "
                                         "(phase correlation), then non-rigid optical flow")
        self.check_button = PushButton(text="Check registration",
                                       tooltip="measure how well the clean image sits on the noisy one")
        self.scale = SpinBox(label="scale", min=2, max=8, tooltip="super-resolution factor: the input is the "
                                                                  "high-resolution image binned this many times")
        self.z_factor = SpinBox(label="z-factor", min=2, max=32,
                                tooltip="output slices per acquired slice spacing (e.g. 5 for 50 nm sections at 10 nm pixels)")
        self.anisotropic = CheckBox(text="anisotropic volume (learn along a lateral axis)",
                                    tooltip="the volume is the anisotropic stack itself (vEMDiffuse-a); "
                                            "unticked, it is an isotropic volume whose z planes are subsampled")
        # ---- model
        self.start_choice = ComboBox(label="start from", choices=[NEW, FINE_TUNE])
        self.preset = ComboBox(label="model size", choices=list(PRESETS),
                               tooltip="tiny: trains on a CPU; small: a laptop GPU; base: the published "
                                       "EMDiffuse network, a GPU")
        self.model = ModelPicker(self.settings)
        # ---- training
        self.patch = SpinBox(label="patch size", min=16, max=1024, step=8, tooltip="training crop edge in pixels")
        self.batch_size = SpinBox(label="batch size", min=1, max=256)
        self.steps = SpinBox(label="steps", min=1, max=10_000_000)
        self.lr = FloatSpinBox(label="learning rate", min=1e-7, max=1e-1, step=1e-5)
        self.lr.native.setDecimals(7)
        self.device = ComboBox(label="device", choices=lambda _w: list(self.env.devices))
        self.run_dir = FileEdit(label="run folder", mode="d",
                                tooltip="where the model card, weights and training state go (empty: a new "
                                        "folder in ~/emdiffuse-runs); use it as the model in Restore")
        # ---- run
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", tooltip="stop after the current step and save")
        self.resume_button = PushButton(text="Resume", tooltip="continue the run in the run folder where it stopped")
        self.save_button = PushButton(text="Save", tooltip="write a checkpoint after the current step")
        buttons = Container(widgets=[self.train_button, self.stop_button, self.resume_button, self.save_button],
                            layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(min=0, max=1, value=0)
        self.status = Label(value="")
        self.plot = LossPlot()

        super().__init__(widgets=[
            _heading("Data"), self.task, self.source, *self.layer_pickers.values(), *self.file_pickers.values(),
            self.register, self.check_button, self.scale, self.z_factor, self.anisotropic,
            _heading("Model"), self.start_choice, self.preset, self.model,
            _heading("Training"), self.patch, self.batch_size, self.steps, self.lr, self.device, self.run_dir,
            buttons, self.progress, self.status,
        ])
        self.native.layout().addWidget(self.plot.widget)

        for name in ("task", "source", "register", "scale", "z_factor", "anisotropic", "preset", "patch",
                     "batch_size", "steps", "lr", "device"):
            bind(getattr(self, name), self.settings, name)
        bind(self.start_choice, self.settings, "start")
        self.run_dir.changed.connect(self._run_dir_changed)
        self.settings.events.run_dir.connect(self._show_run_dir)
        self.settings.events.preset.connect(self._suggest)
        for name in ("task", "source", "start"):
            getattr(self.settings.events, name).connect(self._show_choices)
        self.settings.events.task.connect(self._offer_presets)
        # Each part of the run state repaints only its own widgets (a repaint is not free in a busy viewer).
        for name in ("running", "stopping"):
            getattr(self.run_state.events, name).connect(self._show_buttons)
        self.settings.events.run_dir.connect(self._show_buttons)
        self.run_state.events.step.connect(self._show_progress)
        self.run_state.events.total.connect(self._show_progress)
        self.run_state.events.status.connect(self._show_status)
        self.train_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        self.resume_button.changed.connect(self.resume)
        self.save_button.changed.connect(self.save)
        self.check_button.changed.connect(self.check_registration)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)

        self._worker = None
        self._stop = threading.Event()
        self._trainer = None
        self._last_psnr: float | None = None
        self._suggest()
        self._show_choices()
        self._show_run()
        self._probe = start_worker(probe_for_training, returned=self._set_environment)

    # ---- choices ---------------------------------------------------------------------------------
    def _image_choices(self, _widget=None):
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image) and layer.name != PREVIEW_LAYER]

    def _refresh_layers(self, *_) -> None:
        for picker in self.layer_pickers.values():
            picker.reset_choices()

    def _set_environment(self, env: Environment) -> None:
        self.env = env
        self.device.reset_choices()
        self._offer_presets()
        for problem in env.problems:
            show_warning(problem)

    def _offer_presets(self, *_) -> None:
        self.model.set_presets(self.env.preset_names(self.settings.task))

    def _suggest(self, *_) -> None:
        """A size preset's suggested patch, batch, steps and learning rate."""
        suggested = SUGGESTED[self.settings.preset]
        self.settings.update(patch=suggested["patch"], batch_size=suggested["batch_size"],
                             steps=suggested["steps"], lr=suggested["lr"])

    def _show_choices(self, *_) -> None:
        s = self.settings
        wanted = {key for key, _ in INPUTS[s.task]}
        for key, picker in self.layer_pickers.items():
            picker.visible = key in wanted and s.source == "layers"
        for key, picker in self.file_pickers.items():
            picker.visible = key in wanted and s.source == "files"
        self.register.visible = self.check_button.visible = s.task == "denoise"
        self.scale.visible = s.task == "superres"
        self.z_factor.visible = self.anisotropic.visible = s.task == "isotropic"
        self.preset.visible = s.start == NEW
        self.model.visible = s.start == FINE_TUNE

    def _run_dir_changed(self, value) -> None:
        text = "" if value is None or str(value) in ("", ".") else str(value)
        if text != self.settings.run_dir:
            self.settings.run_dir = text

    def _show_run_dir(self, value: str) -> None:
        if value and str(self.run_dir.value) != value:
            self.run_dir.value = value

    def _show_buttons(self, *_) -> None:
        from ..training.runs import has_state

        r = self.run_state
        resumable = bool(self.settings.run_dir) and has_state(self.settings.run_dir)
        self.train_button.enabled = not r.running
        self.resume_button.enabled = not r.running and resumable
        self.stop_button.enabled = r.running and not r.stopping
        self.save_button.enabled = r.running and self._trainer is not None

    def _show_progress(self, *_) -> None:
        total = max(self.run_state.total, 1)
        if self.progress.max != total:
            self.progress.max = total
        self.progress.value = min(self.run_state.step, total)

    def _show_status(self, status: str) -> None:
        self.status.value = status

    def _show_run(self) -> None:
        self._show_buttons()
        self._show_progress()
        self._show_status(self.run_state.status)

    # ---- inputs ----------------------------------------------------------------------------------
    def _inputs(self) -> dict | str:
        """The data builder's arguments from the chosen layers or files, or why there are none."""
        s = self.settings
        inputs = {}
        for key, label in INPUTS[s.task]:
            if s.source == "layers":
                layer = self.layer_pickers[key].value
                if layer is None:
                    return f"choose the {label} layer (open one with File > Open, or a sample)"
                if layer.rgb:
                    return f"'{layer.name}' is an RGB image: EM training works on grayscale, convert it first"
                inputs[key] = layer.data[0] if layer.multiscale else layer.data
            else:
                path = self.file_pickers[key].value
                if path is None or str(path) in ("", "."):
                    return f"choose the {label} file (TIFF or zarr)"
                inputs[key] = str(path)
        if s.task == "denoise":
            inputs["register"] = s.register
        elif s.task == "superres":
            inputs["scale"] = s.scale
        else:
            inputs.update(z_factor=s.z_factor, anisotropic=s.anisotropic)
        return inputs

    def _request(self, resume: bool) -> TrainRequest | str:
        s = self.settings
        inputs = self._inputs()
        if isinstance(inputs, str):
            return inputs
        if s.start == FINE_TUNE and not resume and not s.model:
            return "choose the model to fine-tune: a bundled preset, a checkpoint file or a training run folder"
        if not s.run_dir:
            s.run_dir = default_run_dir(s.task)
        settings = {"patch": s.patch, "batch_size": s.batch_size, "steps": s.steps, "lr": s.lr,
                    "device": s.device, "seed": s.seed}
        return TrainRequest(s.task, s.run_dir, inputs, preset=s.preset,
                            base=s.model if s.start == FINE_TUNE and not resume else None,
                            resume=resume, settings=settings)

    # ---- running ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.run_state.running

    def start(self, resume: bool = False) -> None:
        """Check the choices, then train in a worker thread. Problems become notifications."""
        if self.running:
            return
        request = self._request(bool(resume))
        if isinstance(request, str):
            show_error(request)
            return
        self._stop = threading.Event()
        self._trainer = None
        if not request.resume:
            self.plot.clear()
        verb = "resuming" if request.resume else "preparing"
        self.run_state.update(running=True, stopping=False, step=0, total=request.settings["steps"],
                              status=f"{verb} {Path(request.run_dir).name}…")
        self._worker = start_worker(train_updates, request, self._stop, yielded=self._on_update)

    def resume(self) -> None:
        self.start(resume=True)

    def stop(self) -> None:
        """Stop after the current step; the run is saved and can be resumed."""
        if self.running:
            self._stop.set()
            self.run_state.update(stopping=True, status="stopping after this step…")

    def save(self) -> None:
        """Write a checkpoint after the current step (runs also save as they go and when they end)."""
        if self.running and self._trainer is not None:
            self._trainer.request_save()
            show_info(f"saving a checkpoint to {self.settings.run_dir} after this step")

    def wait(self, timeout: float = 120.0) -> None:
        """Block until the current run is done, processing Qt events (scripts, tests)."""
        wait_while(lambda: self.running, timeout)

    def _on_update(self, update) -> None:
        if isinstance(update, Started):
            self._trainer = update.trainer
            self._show_buttons()
            self.plot.set_history(list(update.history))
            if update.aligned:
                show_info(f"aligned {update.aligned} misregistered image(s) before training")
            self.run_state.update(step=update.step, total=update.total, status=f"step {update.step}/{update.total}")
        elif isinstance(update, Finished):
            self._finish(update)
        else:  # a TrainUpdate
            self.plot.add(update.step, update.loss, update.val_loss)
            if update.preview is not None:
                self._show_preview(update)
            status = f"step {update.step}/{update.total} · loss {update.loss:.4f}"
            if self.plot.val[0]:
                status += f" · validation {self.plot.val[1][-1]:.4f}"
            if update.val_psnr is not None:
                self._last_psnr = update.val_psnr
            if self._last_psnr is not None:
                status += f" ({self._last_psnr:.1f} dB)"
            if self.run_state.stopping:
                status = "stopping after this step…"
            self.run_state.update(step=update.step, total=update.total, status=status)

    def _show_preview(self, update) -> None:
        strip = preview_strip(update)
        if PREVIEW_LAYER in self.viewer.layers:
            layer = self.viewer.layers[PREVIEW_LAYER]
            layer.data = strip
        else:
            self.viewer.add_image(strip, name=PREVIEW_LAYER, contrast_limits=(-1, 1), colormap="gray")

    def _finish(self, update: Finished) -> None:
        self._trainer = None
        self._last_psnr = None
        if update.error:
            status = f"failed at step {update.step}" if update.step else "failed"
            show_error(update.error)
        elif update.stopped:
            status = f"stopped at step {update.step}/{update.total}: saved in {update.run_dir} (Resume continues)"
        else:
            status = f"trained {update.total} steps: the model is {update.run_dir} (use it in Restore)"
        self.run_state.update(running=False, stopping=False, step=update.step, status=status)

    def check_registration(self) -> None:
        """Report, in a notification, how well the clean image sits on the noisy one."""
        inputs = self._inputs() if self.settings.task == "denoise" else "registration applies to denoising pairs"
        if isinstance(inputs, str):
            show_error(inputs)
            return

        def report(summary: tuple[bool, str]) -> None:
            registered, message = summary
            (show_info if registered else show_warning)(message)

        start_worker(registration_summary, inputs["noisy"], inputs["clean"], returned=report,
                           errored=lambda e: show_error(str(e)))
