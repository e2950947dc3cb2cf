"""Reading, checking and writing EM images: TIFF (2D or a stack) and zarr (v2 or v3, read lazily).

Voxel sizes travel as ImageJ metadata in TIFF (``spacing`` for Z, resolution tags for Y/X) and
as a ``voxel_size`` attribute (z, y, x order, like the array's axes) in zarr. Every write goes to
a temporary name first and is renamed into place, so an interrupted run never leaves half a file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
import zarr

from .files import atomic_directory, atomic_write

TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIXES = (".zarr",)
SUPPORTED = "TIFF (.tif, .tiff) or zarr (.zarr)"


class ImageError(ValueError):
    """An input that cannot be restored, with a one-line message saying what to do."""


def image_format(path: str | os.PathLike) -> str:
    """``tiff`` or ``zarr`` by extension; anything else is an error."""
    suffix = Path(path).suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in ZARR_SUFFIXES:
        return "zarr"
    raise ImageError(f"{Path(path).name}: unknown image format {suffix or '(no extension)'!r} — "
                     f"use {SUPPORTED}")


def _open_zarr_array(path: Path):
    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node
    # A group: OME-Zarr's full-resolution level ("0"), else its only/first array.
    arrays = dict(node.arrays())
    if not arrays:
        raise ImageError(f"{path.name} is a zarr group without arrays — point at the array inside it")
    return arrays.get("0") or arrays[sorted(arrays)[0]]


def read_image(path: str | os.PathLike):
    """A TIFF as a numpy array; a zarr store as a lazy zarr array (read slice by slice later)."""
    path = Path(path)
    fmt = image_format(path)
    if not path.exists():
        raise ImageError(f"{path} does not exist — check the path")
    try:
        if fmt == "zarr":
            return _open_zarr_array(path)
        with tifffile.TiffFile(path) as tif:
            if not len(tif.pages) or not tif.series:
                raise ImageError(f"cannot read {path.name} (no image in it) — check that it is a valid TIFF file")
            if tif.series[0].keyframe.photometric == tifffile.PHOTOMETRIC.RGB:
                shape = tuple(tif.series[0].shape)
                raise ImageError(f"{path.name} is RGB {shape} — convert it to grayscale first")
            return tif.asarray()
    except ImageError:
        raise
    except Exception as e:  # tifffile and zarr raise many types for damaged or foreign files
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ImageError(f"cannot read {path.name} ({reason}) — check that it is a valid "
                         f"{'zarr store' if fmt == 'zarr' else 'TIFF file'}") from None


def check_image(image, name: str = "the image") -> None:
    """Reject what the restorers cannot take: colour, more than 3 dimensions, NaN/inf, constants."""
    shape = tuple(image.shape)
    if len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4:
        kind = "RGB" if shape[-1] == 3 else "RGBA"
        raise ImageError(f"{name} is {kind} (H, W, {shape[-1]}) with shape {shape} — convert it to grayscale first")
    if len(shape) > 3:
        raise ImageError(f"{name} has {len(shape)} dimensions {shape}: only 2D images (Y, X) and stacks "
                         "(Z, Y, X) are supported — split channels or time points into separate files first")
    if len(shape) < 2 or min(shape) < 1:
        raise ImageError(f"{name} has shape {shape} — pass a 2D image (Y, X) or a stack (Z, Y, X)")
    dtype = np.dtype(image.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise ImageError(f"{name} has data type {dtype} — convert it to integers or floats first")
    lo, hi = _value_range(image)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ImageError(f"{name} contains NaN or infinite values — replace them (e.g. with the "
                         "image's median) before restoring")
    if lo == hi:
        raise ImageError(f"{name} is constant (every pixel is {lo:g}): there is nothing to restore — "
                         "check that the right file or channel was exported")


def _value_range(image) -> tuple[float, float]:
    """min and max (not finite if any value is NaN or inf), slice by slice for lazy arrays."""
    planes = [image] if isinstance(image, np.ndarray) or image.ndim == 2 else (image[z] for z in range(image.shape[0]))
    lo, hi = np.inf, -np.inf
    for plane in planes:
        plane = np.asarray(plane)
        plane_lo, plane_hi = float(plane.min()), float(plane.max())  # NaN if any value is NaN
        if not (np.isfinite(plane_lo) and np.isfinite(plane_hi)):
            return plane_lo, plane_hi
        lo, hi = min(lo, plane_lo), max(hi, plane_hi)
    return lo, hi


def read_voxel_size(path: str | os.PathLike) -> tuple[float, ...] | None:
    """Voxel size in the array's axis order ((y, x) or (z, y, x)), or None when the file has none."""
    path = Path(path)
    if image_format(path) == "zarr":
        attrs = dict(zarr.open(str(path), mode="r").attrs)
        size = attrs.get("voxel_size")
        return tuple(float(v) for v in size) if size else None
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        ndim = len(tif.series[0].shape)
        tags = page.tags
        if "XResolution" not in tags or "YResolution" not in tags:
            return None
        xres, yres = (tags[t].value for t in ("XResolution", "YResolution"))
        if xres[0] == 0 or yres[0] == 0 or (xres == (1, 1) and yres == (1, 1) and not tif.imagej_metadata):
            return None
        size = [yres[1] / yres[0], xres[1] / xres[0]]
        if ndim == 3:
            size.insert(0, float((tif.imagej_metadata or {}).get("spacing", 1.0)))
        return tuple(float(v) for v in size)


def write_image(path: str | os.PathLike, array, voxel_size=None, like: str | os.PathLike | None = None) -> Path:
    """Write a TIFF or a zarr store atomically. ``voxel_size`` defaults to ``like``'s (a path to
    the input the array came from) when that has one; zarr stores follow ``like``'s zarr format."""
    path = Path(path)
    fmt = image_format(path)
    array = np.asarray(array)
    if voxel_size is None and like is not None:
        voxel_size = read_voxel_size(like)
    if voxel_size is not None:
        voxel_size = tuple(float(v) for v in voxel_size)[-array.ndim:]
    if fmt == "tiff":
        atomic_write(path, lambda tmp: _write_tiff(tmp, array, voxel_size))
        return path
    zarr_format = _zarr_format_of(like)
    return atomic_directory(path, lambda tmp: _write_zarr(tmp, array, voxel_size, zarr_format))


def _write_tiff(path: Path, array: np.ndarray, voxel_size) -> None:
    kwargs = {}
    # ImageJ hyperstacks cannot hold 64-bit or signed 8-bit data; plain TIFF keeps those exact.
    imagej = array.dtype in (np.uint8, np.uint16, np.float32)
    if voxel_size is not None:
        kwargs["resolution"] = (1.0 / voxel_size[-1], 1.0 / voxel_size[-2])
        if imagej:
            kwargs["metadata"] = {"axes": "ZYX" if array.ndim == 3 else "YX", "unit": "um"}
            if array.ndim == 3:
                kwargs["metadata"]["spacing"] = voxel_size[0]
    tifffile.imwrite(path, array, imagej=imagej and voxel_size is not None, photometric="minisblack", **kwargs)


def _zarr_format_of(like) -> int:
    if like is not None and image_format(like) == "zarr":
        try:
            return int(zarr.open(str(like), mode="r").metadata.zarr_format)
        except Exception:  # not readable as zarr: fall back to the current format
            pass
    return 3


def _write_zarr(path: Path, array: np.ndarray, voxel_size, zarr_format: int) -> None:
    chunks = tuple(min(s, c) for s, c in zip(array.shape, (1,) * (array.ndim - 2) + (512, 512)))
    z = zarr.create_array(store=str(path), shape=array.shape, dtype=array.dtype, chunks=chunks,
                          zarr_format=zarr_format, overwrite=True)
    z[...] = array
    if voxel_size is not None:
        z.attrs["voxel_size"] = list(voxel_size)
