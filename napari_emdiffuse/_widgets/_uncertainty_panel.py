"""Uncertainty inspection: reliability threshold (live), what is in view (the predicted error in grey
levels and the fraction flagged unreliable), overlay toggles."""
from __future__ import annotations

from functools import partial

import numpy as np
from magicgui.widgets import CheckBox, Container, FloatSlider, Label
from superqt.utils import qdebounced

from ..results import BY_FIELD
from ..uncertainty import lazy_reliability_mask, reliability_mask, unreliable_fraction
from ._results import KEY, layer_uid
from ._state import UncertaintyView, bind

# role -> view field
TOGGLES = {"uncertainty": "show_uncertainty", "std": "show_std", "aleatoric": "show_aleatoric", "mask": "show_mask"}


def in_view(layer, world_point, ndisplay: int = 2) -> np.ndarray | None:
    """A result layer's values on screen: the displayed slice, cropped to the visible region (the
    layer's corner pixels); None where the layer has no slice at this point."""
    data = layer.data  # may be lazy (a streamed result): index before reading
    if ndisplay == 3:
        return np.asarray(data)
    if data.ndim == 3:
        z = int(np.round(layer.world_to_data(world_point)[0]))
        if not 0 <= z < data.shape[0]:
            return None
        data = data[z]
    (y0, x0), (y1, x1) = np.asarray(layer.corner_pixels)[:, -2:]
    if y1 > y0 and x1 > x0:  # zero until the canvas has drawn the layer once
        data = data[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1]
    return np.asarray(data)


def fraction_in_view(mask_layer, world_point, ndisplay: int = 2) -> float | None:
    """Fraction of unreliable pixels on screen; None where the layer has no slice at this point."""
    values = in_view(mask_layer, world_point, ndisplay)
    return None if values is None else unreliable_fraction(values)


class UncertaintyPanel(Container):
    """Shows and edits an :class:`UncertaintyView` for the current result layers."""

    def __init__(self, viewer, view: UncertaintyView):
        self.threshold = FloatSlider(label="threshold", min=0.0, max=1.0, step=0.005,
                                     tooltip="predicted error (in the model's [-1, 1] units: 2 / the intensity span "
                                             "times grey levels) above which a pixel is marked unreliable")
        self.readout = Label(label="in view", value="")
        self.readout.native.setWordWrap(True)  # the readout is a sentence; a narrow dock must not cut it
        self.toggles = {
            "uncertainty": CheckBox(text="predicted error",
                                    tooltip="predicted RMS error per pixel in grey levels, calibrated on "
                                            "validation data: where not to believe the result"),
            "std": CheckBox(text="std", tooltip="spread of the diffusion samples"),
            "aleatoric": CheckBox(text="aleatoric", tooltip="noise the model expects in the data itself"),
            "mask": CheckBox(text="unreliable mask"),
        }
        toggles = Container(widgets=list(self.toggles.values()), layout="horizontal", labels=False,
                            label="overlays")
        toggles.margins = (0, 0, 0, 0)
        super().__init__(widgets=[self.threshold, self.readout, toggles])
        self.viewer, self.view = viewer, view
        self.results: dict = {}
        bind(self.threshold, view, "threshold")
        for role, field in TOGGLES.items():
            bind(self.toggles[role], view, field)
            getattr(view.events, field).connect(partial(self._show, role))
        view.events.threshold.connect(self.apply_threshold)
        self._view_changed = qdebounced(self._follow_view, timeout=120)
        # bound methods: napari holds them weakly, so a closed panel is not called back
        camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9 : older
        for emitter in (camera.events.center, camera.events.zoom,
                        viewer.dims.events.current_step, viewer.dims.events.ndisplay):
            emitter.connect(self._on_view_event)
        viewer.layers.events.removed.connect(self._layer_removed)
        self.set_results({})

    def show_threshold(self, value: float) -> None:
        """Set the threshold (a model card's), widening the slider if the card's lies beyond it."""
        if value > self.threshold.max:
            self.threshold.max = 2 * value
        self.view.threshold = value

    def set_results(self, results: dict) -> None:
        """Follow these result layers (role -> layer)."""
        self.results = dict(results)
        for role, checkbox in self.toggles.items():
            checkbox.enabled = role in self.results
            if role in self.results:
                self.results[role].visible = getattr(self.view, TOGGLES[role])
                self.results[role].events.visible.connect(self._on_layer_visible)
        self.apply_threshold()

    def apply_threshold(self, *_) -> None:
        """Recompute the mask at the current threshold: in place for results in memory (a running
        restore keeps writing its new slices into the same array), lazily for streamed ones."""
        mask = self.results.get("mask")
        basis = None if mask is None else self.results.get(BY_FIELD[mask.metadata[KEY]["mask_basis"]].role)
        if basis is not None:
            span = mask.metadata[KEY]["span"]
            if isinstance(basis.data, np.ndarray):
                mask.data[...] = reliability_mask(basis.data, span, self.view.threshold)
                mask.refresh()
            else:
                mask.data = lazy_reliability_mask(basis.data, span, self.view.threshold)
        self.update_readout()

    def update_readout(self) -> None:
        point, ndisplay = self.viewer.dims.point, self.viewer.dims.ndisplay
        mask, predicted = self.results.get("mask"), self.results.get("uncertainty")
        self.view.unreliable_fraction = None if mask is None else fraction_in_view(mask, point, ndisplay)
        values = None if predicted is None else in_view(predicted, point, ndisplay)
        self.view.predicted_error = None if values is None or not values.size else float(np.sqrt(np.mean(
            np.square(values, dtype=np.float64))))
        self._write_readout()

    def _write_readout(self) -> None:
        fraction, error = self.view.unreliable_fraction, self.view.predicted_error
        if not self.results:
            self.readout.value = "restore an image to see its uncertainty"
        elif "mask" not in self.results and error is None:
            self.readout.value = "no uncertainty: the model has no aleatoric head; restore with 2 or more samples"
        elif fraction is None and error is None:
            self.readout.value = "no restored slice here"
        else:
            parts = [] if error is None else [f"predicted error {error:.2g} grey levels (RMS)"]
            parts += [] if fraction is None else [f"{100 * fraction:.1f} % flagged unreliable"]
            self.readout.value = " · ".join(parts)

    def _on_view_event(self, event=None) -> None:
        self._view_changed()

    def _on_layer_visible(self, event) -> None:  # the layer list's eye icon moves the toggle too
        for role, layer in self.results.items():  # uids: plugin code sees layers through proxies
            if layer_uid(layer) == layer_uid(event.source):
                setattr(self.view, TOGGLES[role], layer.visible)

    def _follow_view(self, *_) -> None:  # debounced: after the redraw has updated the corner pixels
        if self.results:
            self.update_readout()

    def _layer_removed(self, event) -> None:
        gone = layer_uid(event.value)
        if any(layer_uid(layer) == gone for layer in self.results.values()):
            self.set_results({r: lay for r, lay in self.results.items() if layer_uid(lay) != gone})

    def _show(self, role: str, visible: bool) -> None:
        if role in self.results:
            self.results[role].visible = visible
