"""The napari reader. A result the package wrote (TIFF or OME-Zarr; OUTPUT or any of its
siblings) opens as the widgets show a restore: the restored image with its uncertainty overlays
and reliability mask, on the grid the result's calibration states, in the widgets' styles. Any
other TIFF or OME-Zarr image it can read opens as one layer with its true voxel size, units and
origin (napari's built-in reader shows them in pixels)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from .calibration import Calibration
from .io import ImageError, image_format, image_shape, read_about, read_calibration, read_image
from .ome_zarr import read_multiscale
from .results import BY_FIELD, FIELDS, output_of, output_paths
from ._widgets._results import KEY
from ._widgets._styles import ISOTROPIC_ROLES, isotropic_std_limits, isotropic_style, result_style, std_limits


def _one_path(path) -> Path | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return Path(path)


def get_reader(path):
    """napari's hook: a reader for a TIFF / zarr image with 2 or 3 dimensions, else None."""
    path = _one_path(path)
    if path is None:
        return None
    try:
        image_format(path)
        if len(image_shape(path)) not in (2, 3):
            return None
    except ImageError:
        return None
    return read


def read(path) -> list[tuple]:
    """Layer data: a result with its siblings, or one image."""
    path = _one_path(path)
    about = read_about(path)
    if about is None or about.get("field") not in BY_FIELD:
        return [_image_layer(path)]
    output = output_of(path, about["field"])
    found = {f: p for f, p in output_paths(output).items() if p.exists() and (read_about(p) or {}).get("field") == f}
    if path not in found.values():  # renamed: the file alone
        found = {about["field"]: path}
    return [_result_layer(found[f], f, output, about.get("task")) for f in FIELDS if f in found]


def _levels(path: Path) -> tuple[list, Calibration | None, dict | None]:
    """The image's levels (finest first; a TIFF has one), its calibration and its image-label
    metadata (an OME-Zarr labels image)."""
    calibration = read_calibration(path)
    if image_format(path) == "tiff":
        return [read_image(path)], calibration, None
    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return [node], calibration, None
    multiscale = read_multiscale(dict(node.attrs))
    return [node[p] for p in multiscale.paths], calibration, multiscale.label


def _grid(calibration: Calibration | None, ndim: int) -> dict:
    calibration = (calibration or Calibration.pixels(ndim)).fit(ndim)
    grid = {"scale": calibration.voxel_size, "translate": calibration.translation,
            "axis_labels": ("z", "y", "x")[-ndim:]}
    if calibration.has_units:
        grid["units"] = tuple(u or "pixel" for u in calibration.units)
    return grid


def _data(levels: list) -> dict:
    return {"data": levels, "multiscale": True} if len(levels) > 1 else {"data": levels[0]}


def _image_layer(path: Path) -> tuple:
    levels, calibration, label = _levels(path)
    name = path.name[: -len("".join(path.suffixes))] if path.suffixes else path.name
    meta = {"name": name, **_grid(calibration, levels[0].ndim), **_data(levels)}
    data = meta.pop("data")
    return data, meta, "labels" if label is not None else "image"


def _result_layer(path: Path, field_name: str, output: Path, task: str | None) -> tuple:
    """One field's layer, as the Restore widget (or, for an isotropic volume and its uncertainty,
    the Isotropic widget) shows it; uncertainty contrast from the coarsest level."""
    levels, calibration, _ = _levels(path)
    role = BY_FIELD[field_name].role
    source_name = output.name[: -len("".join(output.suffixes))] if output.suffixes else output.name
    coarsest = np.asarray(levels[-1][...])
    if task == "isotropic" and field_name in ISOTROPIC_ROLES:
        role = ISOTROPIC_ROLES[field_name]
        kind, style = "image", isotropic_style(role, source_name)
        if field_name != "mean":
            style["contrast_limits"] = isotropic_std_limits(coarsest)
    else:
        kind, style = result_style(role, source_name)
        if BY_FIELD[field_name].colour is not None:
            style["contrast_limits"] = std_limits(coarsest)
    meta = {**style, **_grid(calibration, levels[0].ndim), **_data(levels),
            "metadata": {KEY: {"role": role, "output": str(output), "task": task}}}
    data = meta.pop("data")
    return data, meta, kind
