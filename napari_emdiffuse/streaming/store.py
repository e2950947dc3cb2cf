"""The OME-Zarr result store of a streamed run: its layout (OUTPUT and its siblings, one
OME-Zarr image per output field of :data:`~napari_emdiffuse.results.OUTPUTS`, the mask a labels
image, one stored object per chunk, pyramid levels once finished), the manifest that decides
whether a run may resume, the done markers, and the lazy readers a viewer uses. :mod:`.chunks`
fills it. A result written in one go (``io.write_image``) has the same layout without the
manifest and the done markers."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr

from ..calibration import Calibration
from ..files import atomic_directory
from ..io import ABOUT, read_calibration
from ..ome_zarr import add_levels, create_image
from ..results import BY_FIELD, describe_file, output_dtype, output_paths
from .lattice import ChunkGrid

DONE = "emdiffuse_done"
MANIFEST = "emdiffuse_stream"


def input_calibration(image) -> Calibration | None:
    """The calibration an input path's metadata states (OME-Zarr, a zarr ``voxel_size``
    attribute, ImageJ or OME-TIFF metadata), or None (an array without a path, or no metadata)."""
    return read_calibration(image) if isinstance(image, (str, os.PathLike)) else None


def _create_image(path: Path, grid: ChunkGrid, ndim: int, dtype, calibration: Calibration, field_name: str,
                  mean_path: Path, task: str):
    """One field's OME-Zarr image, chunked like the lattice, saying what it holds."""
    described = describe_file(field_name, mean_path, task)
    name = mean_path.stem if field_name == "mean" else f"{mean_path.stem} {field_name}"
    return create_image(path, grid.out_shape[-ndim:], dtype, grid.out_chunks[-ndim:], calibration, name,
                        label=described.get("label"), attributes={ABOUT: described["about"]})


def _read_manifest(path: Path) -> dict | None:
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs).get(MANIFEST)
    except Exception:  # not a zarr group (or not readable): no run to resume
        return None


def prepare_outputs(output, fields, grid: ChunkGrid, ndim: int, dtype: str, manifest: dict,
                    calibration: Calibration | None, overwrite: bool, replace_other_runs: bool = False) -> None:
    """Create OUTPUT and its siblings for ``fields`` (or, when they hold an unfinished run with
    the same manifest, keep them to resume), calibrated from the input's ``calibration`` (None:
    pixels) by the task's geometry. ``replace_other_runs``: an emdiffuse run with other
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
    out = grid.geometry.output_calibration(calibration, ndim)
    task = manifest["task"]
    for name, path in paths.items():
        if name != "mean":
            _create_image(path, grid, ndim, output_dtype(name, dtype), out, name, mean_path, task)

    def create_mean(tmp: Path) -> None:  # appears complete, manifest and done markers included, or not at all
        group = _create_image(tmp, grid, ndim, output_dtype("mean", dtype), out, "mean", mean_path, task)
        group.create_array(DONE, shape=grid.grid_shape, chunks=(1, 1, 1), dtype="uint8", fill_value=0)
        group.attrs[MANIFEST] = manifest

    atomic_directory(mean_path, create_mean)


def finished_chunks(output) -> np.ndarray:
    """The done markers of a streamed OUTPUT: a uint8 array over the chunk lattice, 1 = finished."""
    return zarr.open_array(str(output), path=DONE, mode="r")[...]


def add_pyramids(output, fields) -> None:
    """Pyramid levels for OUTPUT and its siblings, once every chunk is done (viewers open a large
    result at a coarse level first); levels already there are kept."""
    for path in output_paths(output, fields).values():
        add_levels(path)


def open_result(output, field_name: str = "mean"):
    """A streamed result as a lazy zarr array (OUTPUT or a sibling): what a viewer layer shows.
    Chunks not yet finished read as 0; re-read (``layer.refresh()``) when a chunk arrives."""
    return zarr.open_array(str(output_paths(output, (field_name,))[field_name]), path="0", mode="r")


def streamed_fields(output) -> tuple[str, ...]:
    """The result fields (results.OUTPUTS) a streamed OUTPUT holds."""
    manifest = _read_manifest(Path(output))
    if manifest is None:
        raise ValueError(f"{output} is not an emdiffuse streamed result")
    return tuple(manifest["fields"])


def streamed_mask_basis(output) -> str | None:
    """The field a streamed OUTPUT's reliability mask was computed from (None: no mask)."""
    manifest = _read_manifest(Path(output)) or {}
    return manifest.get("mask_basis") or ("std" if "std" in manifest.get("fields", ()) else "aleatoric")


def result_layer_data(output, field_name: str = "mean") -> tuple:
    """A napari layer-data tuple ``(data, metadata, kind)`` for a streamed result that shows
    finished chunks as they arrive: ``data`` is the lazy zarr array (unfinished chunks read 0),
    contrast limits come from the run's normaliser (not from the still empty data), ``scale``,
    ``translate`` and ``units`` from the store's calibration. Add it with
    ``viewer.add_image(data, **metadata)`` (``add_labels`` for the mask) and call
    ``layer.refresh()`` from ``on_chunk`` in the GUI thread."""
    path = output_paths(output, (field_name,))[field_name]
    manifest = _read_manifest(Path(output)) or {}
    lo, hi = manifest.get("normalizer", (None, None))
    data = open_result(output, field_name)
    meta = {"name": f"{Path(output).stem} {field_name}" if field_name != "mean" else Path(output).stem}
    calibration = read_calibration(path)
    if calibration is not None:
        meta.update(scale=calibration.voxel_size, translate=calibration.translation)
        if calibration.has_units:
            meta["units"] = tuple(u or "pixel" for u in calibration.units)
    if lo is not None and field_name == "mean":
        meta["contrast_limits"] = (lo, hi)
    elif lo is not None and BY_FIELD[field_name].colour is not None:  # an uncertainty overlay
        meta["contrast_limits"] = (0.0, (hi - lo) / 4)  # a quarter of the span: strong uncertainty
    return data, meta, BY_FIELD[field_name].layer
