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
from ._results import KEY, image_choices, layer_uid, source_array
from ._run_panel import RunPanel
from ._state import MODEL_DEFAULT, RunState, bind
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
    device: str = "auto"
    seed: int = 0


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
                steps=settings["steps"], device=settings["device"], seed=settings["seed"],
                progress=lambda done, total: put(Progress(done, total)), cancel=cancel.is_set):
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
        scale = np.asarray(self.source.scale, dtype=float).copy()
        scale[0] /= f
        common = {"scale": scale, "translate": np.asarray(self.source.translate, dtype=float),
                  "units": self.source.units, "axis_labels": self.source.axis_labels}
        uid, name = layer_uid(self.source), self.source.name
        self._remove_previous(uid)
        self.layers["isotropic"] = self.viewer.add_image(
            mean, name=f"{name} isotropic", colormap="gray", contrast_limits=self.source.contrast_limits,
            metadata={KEY: {"source": uid, "role": "isotropic", "z_factor": f}}, **common)
        if "std" in self.arrays:
            self.layers["std"] = self.viewer.add_image(
                self.arrays["std"], name=f"{name} isotropic uncertainty (std)", colormap="inferno",
                blending="additive", opacity=0.8, metadata={KEY: {"source": uid, "role": "isotropic_std"}},
                **common)

    def _remove_previous(self, uid: str) -> None:
        for layer in list(self.viewer.layers):
            meta = layer.metadata.get(KEY) or {}
            if meta.get("source") == uid and meta.get("role") in ("isotropic", "isotropic_std"):
                self.viewer.layers.remove(layer)

    def finish(self) -> None:
        if "std" in self.layers and self.gaps:
            top = float(np.percentile(self.arrays["std"], 99.5))
            self.layers["std"].contrast_limits = (0.0, max(top, 1e-6))


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
        self.device = ComboBox(label="device", choices=list(self.env.devices))
        self.run = RunPanel(self.run_state)
        self.run.run_button.text = "Reconstruct"
        super().__init__(widgets=[self.image, self.model, self.z_factor, self.samples, self.steps,
                                  self.device, self.run])
        for name in ("z_factor", "samples", "steps", "device"):
            bind(getattr(self, name), self.settings, name)
        self.run.run_button.changed.connect(self.start)
        self.run.cancel_button.changed.connect(self.cancel)
        self._cancel = threading.Event()
        self._output: IsotropicLayers | None = None
        self._started = 0.0
        self._probe = start_worker(probe, returned=self._set_environment)

    def _image_choices(self, _widget=None):
        return image_choices(self.viewer)

    def _set_environment(self, env: Environment) -> None:
        self.env = env
        self.device.choices = list(env.devices)
        self.model.set_presets(env.preset_names(TASK))
        for problem in env.problems:
            show_warning(problem)

    @property
    def running(self) -> bool:
        return self.run_state.running

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
                   "steps": s.steps or None, "device": s.device, "seed": s.seed}
        self._output = IsotropicLayers(self.viewer, layer)
        self._cancel = threading.Event()
        self._started = time.perf_counter()
        self.run_state.update(running=True, cancelling=False, done=0, total=0,
                              status=f"loading {s.model.rsplit('/', 1)[-1]}…")
        start_worker(reconstruct_updates, source_array(layer), request, self._cancel, cancel=self._cancel,
                     yielded=self._on_update)

    def cancel(self) -> None:
        """Stop at the next network batch; finished gaps stay."""
        if self.running:
            self._cancel.set()
            self.run_state.update(cancelling=True, status="cancelling…")

    def _on_update(self, update) -> None:
        if isinstance(update, Progress):
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

    def wait(self, timeout: float = 60.0) -> None:
        """Block until the current run is done, processing Qt events (scripts, tests)."""
        wait_while(lambda: self.running, timeout)
