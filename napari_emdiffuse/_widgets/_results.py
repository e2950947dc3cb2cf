"""Result layers of a restore: the restored image, its uncertainty overlays and reliability mask,
placed on the source layer's grid, filled slice by slice, replacing the previous results of the
same source."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer

from ..calibration import Calibration
from ..results import BY_ROLE, OUTPUTS
from ..uncertainty import reliability_mask
from ._styles import result_style, std_limits

KEY = "emdiffuse"  # layer.metadata key: {"source": source uid, "role": ..., "span": ...}
ROLES = tuple(o.role for o in OUTPUTS)
IMAGE_ROLES = tuple(o.role for o in OUTPUTS if o.layer == "image")  # filled from the result; the mask is derived
OVERLAY_ROLES = tuple(o.role for o in OUTPUTS if o.colour is not None)  # uncertainty maps over the image
PLACE_PAUSE_MS = 15


def source_array(layer):
    """The full-resolution data of an image layer (level 0 of a multiscale one)."""
    return layer.data[0] if layer.multiscale else layer.data


def layer_calibration(layer) -> Calibration:
    """A layer's voxel size, units and translation (where its first pixel's centre lies): what
    a result store records as its input's."""
    return Calibration.of(layer.scale, [str(u) for u in layer.units], layer.translate)


def layer_uid(layer) -> str:
    return str(layer.unique_id)


def role_of(layer) -> str | None:
    return (layer.metadata.get(KEY) or {}).get("role")


def image_choices(viewer) -> list[tuple[str, object]]:
    """(name, layer) of the layers a widget may take as input: images and restored images, not
    uncertainty overlays. Labels are offered so that choosing one explains itself."""
    return [(layer.name, layer) for layer in viewer.layers
            if isinstance(layer, (Image, Labels)) and role_of(layer) in (None, "restored")]


def find_results(layers, source_uid: str) -> dict:
    """role -> layer for the results of the source with this uid."""
    found = {}
    for layer in layers:
        meta = layer.metadata.get(KEY) or {}
        if meta.get("source") == source_uid and meta.get("role") in ROLES:
            found[meta["role"]] = layer
    return found


def placement(source, out_plane: tuple[int, int], first_z: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and translate of a result whose planes are ``out_plane`` (the source's plane, or
    larger for super-resolution) and whose first slice is the source's slice ``first_z``.
    Pixel centres follow napari's convention, so the pixel boxes of both layers coincide."""
    scale = np.asarray(source.scale, dtype=float).copy()
    translate = np.asarray(source.translate, dtype=float).copy()
    in_plane = source_array(source).shape[-2:]
    for axis, (n_in, n_out) in zip((-2, -1), zip(in_plane, out_plane)):
        factor = n_out / n_in
        new_scale = scale[axis] / factor
        translate[axis] += -scale[axis] / 2 + new_scale / 2
        scale[axis] = new_scale
    if source.ndim == 3:
        translate[0] += first_z * scale[0]
    return scale, translate


def _matrix(value) -> np.ndarray:
    """A scale / translate vector or an Affine transform as an array, for comparisons."""
    return np.asarray(getattr(value, "affine_matrix", value), dtype=float)


class ResultLayers:
    """The result layers of one run. Layers appear (or take over the previous results of the
    same source) when the first slice finishes, one per turn of the Qt event loop so the viewer
    stays responsive while napari builds them; later slices fill them in place.
    ``on_placed(layers)`` is called once all of them exist; placing stops once ``alive()`` is
    false (the viewer was closed)."""

    def __init__(self, viewer, source, slices: Sequence[int], threshold: Callable[[], float],
                 show: dict[str, bool] | None = None, on_placed: Callable[[dict], None] | None = None,
                 alive: Callable[[], bool] = lambda: True):
        self.viewer, self.source, self.threshold, self.alive = viewer, source, threshold, alive
        self.source_uid = layer_uid(source)
        self.slices = list(slices)  # source z of each result plane (a 2D source: [0])
        self.show = show or {}
        self.on_placed = on_placed
        self.arrays: dict[str, np.ndarray] = {}
        self.layers: dict = {}
        self.finished: list[int] = []
        self.meta: dict = {}
        self._pending: list[str] = []
        self._previous: dict = {}
        self._grid: dict = {}

    @property
    def stacked(self) -> bool:
        return self.source.ndim == 3

    @property
    def placed(self) -> bool:
        return bool(self.layers) and not self._pending

    @property
    def settled(self) -> bool:
        """No layer is still being placed (or none will be: nothing finished)."""
        return self.placed or not self.arrays

    def add_slice(self, z: int, result) -> None:
        first = not self.arrays
        if first:
            self._allocate(result)
        index = self.slices.index(z) if self.stacked else ...
        for role in IMAGE_ROLES:
            if role in self.arrays:
                self.arrays[role][index] = self._part(result, role)
        if "mask" in self.arrays:  # at the threshold shown now, which may have moved during the run
            basis = getattr(result, self.meta["mask_basis"])
            self.arrays["mask"][index] = reliability_mask(basis, self.meta["span"], self.threshold())
        self.finished.append(z)
        if first:
            self._start_placing()
        for layer in self.layers.values():
            layer.refresh()

    def finish(self) -> None:
        """Keep only the finished slices (a cancelled or failed stack); settle the contrast."""
        if not self.arrays:
            return
        keep = len(self.finished)
        if self.stacked and keep < len(self.slices):  # slices run in order: the finished come first
            for role in self.arrays:
                self.arrays[role] = self.arrays[role][:keep]
                if role in self.layers:
                    self.layers[role].data = self.arrays[role]
        for role in OVERLAY_ROLES:
            if role in self.layers:
                self.layers[role].contrast_limits = std_limits(self.arrays[role])

    @staticmethod
    def _part(result, role: str):
        return getattr(result, BY_ROLE[role].field)

    def _allocate(self, result) -> None:
        lead = (len(self.slices),) if self.stacked else ()
        for role in IMAGE_ROLES:
            part = self._part(result, role)
            if part is not None:
                self.arrays[role] = np.zeros(lead + part.shape, dtype=part.dtype)
        basis = result.info.get("mask_basis")
        if basis is not None:
            self.arrays["mask"] = np.zeros(lead + result.mean.shape, dtype=np.uint8)
        lo, hi = result.info.get("normalizer", (0.0, 2.0))
        self.meta = {"span": float(hi - lo), "mask_basis": basis,
                     **{k: result.info.get(k) for k in ("model", "samples", "steps", "sampler")}}

    def _start_placing(self) -> None:
        self._previous = find_results(self.viewer.layers, self.source_uid)
        for role, old in self._previous.items():
            if role not in self.arrays:
                self.viewer.layers.remove(old)
        out_plane = self.arrays["restored"].shape[-2:]
        scale, translate = placement(self.source, out_plane, self.slices[0] if self.stacked else 0)
        self._grid = {"scale": scale, "translate": translate, "affine": self.source.affine}
        self._pending = [role for role in ROLES if role in self.arrays]
        self._place_next()

    def _place_next(self) -> None:
        if not self.alive():
            self._pending.clear()
            return
        role = self._pending[0]
        data = self.arrays[role]
        meta = {KEY: dict(self.meta, source=self.source_uid, role=role)}
        layer = place_result_layer(self.viewer, self.source, self._previous.get(role), role, data, meta,
                                   self._grid, self.show)
        if role == "restored":
            layer.contrast_limits = self.source.contrast_limits
        elif role in OVERLAY_ROLES:
            layer.contrast_limits = std_limits(data[: len(self.finished)] if self.stacked else data)
        self.layers[role] = layer
        self._pending.pop(0)
        if self._pending:  # a short pause lets the viewer repaint and take input in between
            QTimer.singleShot(PLACE_PAUSE_MS, self._place_next)
        elif self.on_placed is not None:
            self.on_placed(self.layers)


def place_result_layer(viewer, source, previous, role: str, data, meta: dict, grid: dict, show: dict[str, bool]):
    """``previous`` (the same role's layer of an earlier run) given the new data, or else a new
    layer: re-using it keeps what the user set on it (contrast, opacity, position in the list)."""
    if previous is None:
        return add_result_layer(viewer, source, role, data, meta, grid, show)
    previous.metadata = meta
    for name, value in grid.items():  # each change makes napari re-slice: skip no-ops
        if not np.allclose(_matrix(getattr(previous, name)), _matrix(value)):
            setattr(previous, name, value)
    previous.data = data
    return previous


def add_result_layer(viewer, source, role: str, data, meta: dict, grid: dict, show: dict[str, bool]):
    """A result layer in its role's style (gray image, fading colour overlay, red mask), placed
    on ``grid`` at creation: a layer added off-grid would move the viewer's slice."""
    kind, style = result_style(role, source.name, show)
    add = viewer.add_labels if kind == "labels" else viewer.add_image
    return add(data, metadata=meta, units=source.units, axis_labels=source.axis_labels, **style, **grid)
