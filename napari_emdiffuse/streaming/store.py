"""The OME-Zarr result store of a streamed run: its layout (OUTPUT and its siblings, one per
output field of :data:`~napari_emdiffuse.results.OUTPUTS`, one stored object per chunk), the
manifest that decides whether a run may resume, the done markers, and the lazy readers a viewer
uses. :mod:`.chunks` fills it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr

from ..files import atomic_directory
from ..io import image_format, read_voxel_size
from ..results import BY_FIELD, output_dtype, output_paths
from .lattice import ChunkGrid

DONE = "emdiffuse_done"
MANIFEST = "emdiffuse_stream"


def input_voxel_size(image):
    """The input's voxel size (z, y, x order) and the axes' units (or None) from OME-Zarr
    metadata, a ``voxel_size`` attribute or TIFF tags (micrometres); None when unknown or the
    input is an array without a path."""
    if not isinstance(image, (str, os.PathLike)):
        return None, None
    if image_format(image) == "zarr":
        scale, units = read_ome_scale(image, with_units=True)
        return (scale, units) if scale is not None else (read_voxel_size(image), None)
    size = read_voxel_size(image)
    return size, None if size is None else ["micrometer"] * len(size)  # ImageJ's unit, as io writes it


def read_ome_scale(path, with_units: bool = False):
    """The first dataset's scale from OME-Zarr (NGFF 0.4 or 0.5) multiscales metadata, or None;
    with ``with_units``, also the axes' units (None where the metadata has none)."""
    attrs = dict(zarr.open(str(path), mode="r").attrs)
    multiscales = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
    scale, units = None, None
    try:
        for transform in multiscales[0]["datasets"][0]["coordinateTransformations"]:
            if transform.get("type") == "scale":
                scale = tuple(float(v) for v in transform["scale"])
        units = [axis.get("unit") for axis in multiscales[0]["axes"]]
    except (TypeError, KeyError, IndexError, AttributeError):
        pass
    return (scale, units) if with_units else scale


def ome_metadata(ndim: int, voxel_size, name: str, units=None) -> dict:
    """NGFF 0.5 ``ome`` attributes for a single-level image (spatial axes, voxel size as scale)."""
    units = list(units)[-ndim:] if units is not None and len(units) >= ndim else [None] * ndim
    axes = [{"name": a, "type": "space", **({"unit": u} if u else {})} for a, u in zip("zyx"[-ndim:], units)]
    scale = [1.0] * ndim if voxel_size is None else [float(v) for v in tuple(voxel_size)[-ndim:]]
    return {"version": "0.5", "multiscales": [{
        "name": name, "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]}


def _create_image(path: Path, grid: ChunkGrid, ndim: int, dtype, voxel_size, units, name: str):
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    shape, chunks = grid.out_shape[-ndim:], grid.out_chunks[-ndim:]
    group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    group.attrs.update({"ome": ome_metadata(ndim, voxel_size, name, units),
                        **({"voxel_size": list(voxel_size)} if voxel_size is not None else {})})
    return group


def _read_manifest(path: Path) -> dict | None:
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs).get(MANIFEST)
    except Exception:  # not a zarr group (or not readable): no run to resume
        return None


def prepare_outputs(output, fields, grid: ChunkGrid, ndim: int, dtype: str, manifest: dict, voxel_size, units,
                    overwrite: bool, replace_other_runs: bool = False) -> None:
    """Create OUTPUT and its siblings for ``fields`` (or, when they hold an unfinished run with
    the same manifest, keep them to resume). ``replace_other_runs``: an emdiffuse run with other
    settings at OUTPUT is replaced instead of refused; anything else there is always refused."""
    paths = output_paths(output, fields)
    mean_path = paths["mean"]
    previous = _read_manifest(mean_path) if mean_path.exists() else None
    if replace_other_runs and previous is not None and previous != manifest:
        overwrite = True
    if mean_path.exists() and not overwrite:
        if previous is None:
            raise ValueError(f"{mean_path} exists and is not an unfinished emdiffuse run — choose another "
                             "OUTPUT or delete it")
        if previous != manifest:
            differ = sorted(k for k in set(previous) | set(manifest) if previous.get(k) != manifest.get(k))
            raise ValueError(f"{mean_path} holds a run with other settings ({', '.join(differ)} differ) — "
                             "resume with the same options, or delete it to start again")
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            raise ValueError(f"{', '.join(missing)} missing from an unfinished run — delete {mean_path} to start again")
        return
    out_voxel = grid.geometry.output_voxel_size(None if voxel_size is None else tuple(voxel_size)[-ndim:])
    for name, path in paths.items():
        if name != "mean":
            _create_image(path, grid, ndim, output_dtype(name, dtype), out_voxel, units, f"{mean_path.stem} {name}")

    def create_mean(tmp: Path) -> None:  # appears complete, manifest and done markers included, or not at all
        group = _create_image(tmp, grid, ndim, output_dtype("mean", dtype), out_voxel, units, mean_path.stem)
        group.create_array(DONE, shape=grid.grid_shape, chunks=(1, 1, 1), dtype="uint8", fill_value=0)
        group.attrs[MANIFEST] = manifest

    atomic_directory(mean_path, create_mean)


def finished_chunks(output) -> np.ndarray:
    """The done markers of a streamed OUTPUT: a uint8 array over the chunk lattice, 1 = finished."""
    return zarr.open_array(str(output), path=DONE, mode="r")[...]


def open_result(output, field_name: str = "mean"):
    """A streamed result as a lazy zarr array (OUTPUT or a sibling): what a viewer layer shows.
    Chunks not yet finished read as 0; re-read (``layer.refresh()``) when a chunk arrives."""
    return zarr.open_array(str(output_paths(output, (field_name,))[field_name]), path="0", mode="r")


def streamed_fields(output) -> tuple[str, ...]:
    """The result fields (mean, std, aleatoric, mask) a streamed OUTPUT holds."""
    manifest = _read_manifest(Path(output))
    if manifest is None:
        raise ValueError(f"{output} is not an emdiffuse streamed result")
    return tuple(manifest["fields"])


def result_layer_data(output, field_name: str = "mean") -> tuple:
    """A napari layer-data tuple ``(data, metadata, kind)`` for a streamed result that shows
    finished chunks as they arrive: ``data`` is the lazy zarr array (unfinished chunks read 0),
    contrast limits come from the run's normaliser (not from the still empty data), ``scale``
    from the voxel size. Add it with ``viewer.add_image(data, **metadata)`` (``add_labels`` for
    the mask) and call ``layer.refresh()`` from ``on_chunk`` in the GUI thread."""
    path = output_paths(output, (field_name,))[field_name]
    manifest = _read_manifest(Path(output)) or {}
    lo, hi = manifest.get("normalizer", (None, None))
    data = open_result(output, field_name)
    meta = {"name": f"{Path(output).stem} {field_name}" if field_name != "mean" else Path(output).stem}
    scale = read_ome_scale(path)
    if scale is not None:
        meta["scale"] = scale
    if lo is not None and field_name == "mean":
        meta["contrast_limits"] = (lo, hi)
    elif lo is not None and BY_FIELD[field_name].colour is not None:  # an uncertainty overlay
        meta["contrast_limits"] = (0.0, (hi - lo) / 4)  # a quarter of the span: strong uncertainty
    return data, meta, BY_FIELD[field_name].layer
