"""Result layers of an isotropic reconstruction: the isotropic volume (acquired slices filled in
at once, generated ones as their gap finishes) and its uncertainty overlays (predicted error,
std), on the source's grid with
the z scale divided by the z-factor, replacing the source's earlier ones; in memory or read from
the OME-Zarr store a streamed run writes."""
from __future__ import annotations

import numpy as np

from ._results import KEY, layer_uid, source_array
from ._styles import ISOTROPIC_ROLES, isotropic_std_limits, isotropic_style

OVERLAYS = tuple(name for name in ISOTROPIC_ROLES if name != "mean")  # result fields shown over the volume
from ._streamed import StoreLayers


class IsotropicLayers:
    """The output layers: the isotropic volume (acquired slices filled in at once, generated
    ones as their gap finishes) and its uncertainty overlays, on the source's grid with z scale / f."""

    def __init__(self, viewer, source):
        self.viewer, self.source = viewer, source
        self.arrays: dict[str, np.ndarray] = {}
        self.layers: dict = {}
        self.z_factor = 0
        self.gaps: list[int] = []

    def add_unit(self, gap: int, result) -> None:
        f = int(result.info["z_factor"])
        if not self.layers:
            self._create(result, f)
        rows = slice(gap * f + 1, (gap + 1) * f)
        for name, array in self.arrays.items():
            array[rows] = getattr(result, name)
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
        self.arrays["mean"] = mean
        for name in OVERLAYS:
            if getattr(result, name) is not None:
                self.arrays[name] = np.zeros(mean.shape, dtype=np.float32)
        self.z_factor = f
        self.layers = add_isotropic_layers(self.viewer, self.source, f, self.arrays)

    def finish(self) -> None:
        for name in OVERLAYS:
            if name in self.layers and self.gaps:
                self.layers[name].contrast_limits = isotropic_std_limits(self.arrays[name])


class StreamedIsotropicLayers(StoreLayers):
    """The output layers of a streamed reconstruction: lazy views of the OME-Zarr store being
    written (acquired and generated slices), refreshed as each chunk is written."""

    def __init__(self, viewer, source):
        super().__init__()
        self.viewer, self.source = viewer, source
        self.z_factor = 0
        self.output = ""

    def open(self, output: str) -> None:
        from ..streaming import result_layer_data, streamed_fields  # lazily: streaming brings torch

        self.output = str(output)
        fields = streamed_fields(output)
        mean, meta = result_layer_data(output, "mean")[:2]
        arrays = {"mean": mean, **{name: result_layer_data(output, name)[0] for name in OVERLAYS if name in fields}}
        n = source_array(self.source).shape[0]
        self.z_factor = (mean.shape[0] - 1) // (n - 1)
        self.layers = add_isotropic_layers(self.viewer, self.source, self.z_factor, arrays)
        lo, hi = meta["contrast_limits"]
        for name in OVERLAYS:  # still empty: limits from the run's intensity span
            if name in self.layers:
                self.layers[name].contrast_limits = (0.0, (hi - lo) / 8)


def add_isotropic_layers(viewer, source, z_factor: int, arrays: dict) -> dict:
    """The isotropic volume (``arrays["mean"]``) and its uncertainty overlays (by result field) on
    the source's grid with z scale / z_factor, replacing the source's earlier ones."""
    uid, name = layer_uid(source), source.name
    for layer in list(viewer.layers):
        meta = layer.metadata.get(KEY) or {}
        if meta.get("source") == uid and meta.get("role") in ISOTROPIC_ROLES.values():
            viewer.layers.remove(layer)
    scale = np.asarray(source.scale, dtype=float).copy()
    scale[0] /= z_factor
    common = {"scale": scale, "translate": np.asarray(source.translate, dtype=float),
              "units": source.units, "axis_labels": source.axis_labels}
    layers = {"isotropic": viewer.add_image(
        arrays["mean"], contrast_limits=source.contrast_limits,
        metadata={KEY: {"source": uid, "role": "isotropic", "z_factor": z_factor}},
        **isotropic_style("isotropic", name), **common)}
    for field_name in OVERLAYS:
        if field_name in arrays:
            role = ISOTROPIC_ROLES[field_name]
            layers[field_name] = viewer.add_image(arrays[field_name], metadata={KEY: {"source": uid, "role": role}},
                                                  **isotropic_style(role, name), **common)
    return layers
