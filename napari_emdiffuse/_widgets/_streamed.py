"""Result layers of a streamed restore: lazy views of the OME-Zarr store being written, placed
on the source layer's grid, that show each chunk as soon as it is written."""
from __future__ import annotations

from typing import Callable

from ..results import BY_FIELD
from ..uncertainty import lazy_reliability_mask
from ._results import KEY, ROLES, find_results, layer_uid, place_result_layer, placement


class StoreLayers:
    """Layers that read a store while a run writes it: each written chunk re-reads them."""

    def __init__(self):
        self.layers: dict = {}
        self.chunks = 0  # written by this run

    def chunk_written(self) -> None:
        self.chunks += 1
        self.finish()

    def finish(self) -> None:
        for layer in self.layers.values():
            layer.refresh()


class StreamedLayers(StoreLayers):
    """The same roles and styles as :class:`._results.ResultLayers`, with the data left on disk.
    The mask is computed from its basis (the predicted error, or the std) as it is read, so the threshold slider applies at once."""

    def __init__(self, viewer, source, threshold: Callable[[], float], show: dict[str, bool] | None = None,
                 alive: Callable[[], bool] = lambda: True):
        super().__init__()
        self.viewer, self.source, self.threshold, self.alive = viewer, source, threshold, alive
        self.show = show or {}
        self.meta: dict = {}

    @property
    def placed(self) -> bool:
        return bool(self.layers)

    settled = True  # layers are placed at once, when the store opens

    def open(self, output: str, model_meta: dict) -> None:
        """Show the store at ``output`` in the source's result layers (re-using an earlier run's)."""
        from ..streaming import result_layer_data, streamed_fields, streamed_mask_basis  # lazily: brings torch

        views = {BY_FIELD[f].role: result_layer_data(output, f)[:2] for f in streamed_fields(output)}
        lo, hi = views["restored"][1]["contrast_limits"]
        self.meta = {"span": float(hi - lo), "output": str(output), "mask_basis": streamed_mask_basis(output),
                     **model_meta}
        if "mask" in views:
            basis = views[BY_FIELD[self.meta["mask_basis"]].role][0]
            views["mask"] = (lazy_reliability_mask(basis, self.meta["span"], self.threshold()), {})
        previous = find_results(self.viewer.layers, layer_uid(self.source))
        for role, old in previous.items():
            if role not in views:
                self.viewer.layers.remove(old)
        scale, translate = placement(self.source, views["restored"][0].shape[-2:], 0)
        grid = {"scale": scale, "translate": translate, "affine": self.source.affine}
        for role in ROLES:
            if role not in views or not self.alive():
                continue
            data, store_meta = views[role]
            meta = {KEY: dict(self.meta, source=layer_uid(self.source), role=role)}
            layer = place_result_layer(self.viewer, self.source, previous.get(role), role, data, meta, grid, self.show)
            if role == "restored":
                layer.contrast_limits = self.source.contrast_limits
            elif "contrast_limits" in store_meta:  # the data are still empty: limits from the run
                layer.contrast_limits = store_meta["contrast_limits"]
            self.layers[role] = layer
