"""Reading, checking and writing EM images: TIFF (2D or a stack) and zarr (v2 or v3, read lazily).

Every image carries its :class:`~napari_emdiffuse.calibration.Calibration` (voxel size, units,
origin). TIFF: read from OME-TIFF metadata, ImageJ metadata (``unit``, ``spacing``, origin) or
the resolution tags (and their unit), with tifffile's own readers; written back as ImageJ
metadata in the same unit (an ImageJ "nm" stays "nm"; no unit stays none), or as OME-TIFF for
an ``.ome.tif`` name or a data type ImageJ cannot hold. zarr: read from OME-Zarr metadata (or a
plain array's ``voxel_size`` attribute); every zarr written is an OME-Zarr image
(:mod:`.ome_zarr`). Files the package writes say what they hold (:func:`read_about`). Every
write goes to a temporary name first and is renamed into place, so an interrupted run never
leaves half a file.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile
import zarr

from . import ome_zarr
from .calibration import Calibration, convert, space_unit, unit_symbol
from .files import atomic_directory, atomic_write

TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIXES = (".zarr",)
SUPPORTED = "TIFF (.tif, .tiff) or zarr (.zarr)"
SOFTWARE = "napari-emdiffuse"
ABOUT = "emdiffuse"  # what a file the package wrote holds: {"field": "std", "task": "denoise"}
IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)  # what ImageJ hyperstacks hold
_RESOLUTION_UNITS = {tifffile.RESUNIT.INCH: "inch", tifffile.RESUNIT.CENTIMETER: "centimeter",
                     tifffile.RESUNIT.MILLIMETER: "millimeter", tifffile.RESUNIT.MICROMETER: "micrometer"}
# the units baseline TIFF readers know in the ResolutionUnit tag
_RESOLUTION_TAGS = {unit: tag for tag, unit in _RESOLUTION_UNITS.items() if unit in ("inch", "centimeter")}


class ImageError(ValueError):
    """An input that cannot be restored, with a one-line message saying what to do."""


def image_format(path: str | os.PathLike) -> str:
    """``tiff`` or ``zarr`` by extension (a path inside a ``.zarr`` store is zarr); anything
    else is an error."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in ZARR_SUFFIXES or any(p.suffix.lower() in ZARR_SUFFIXES for p in path.parents):
        return "zarr"
    raise ImageError(f"{path.name}: unknown image format {suffix or '(no extension)'!r} — "
                     f"use {SUPPORTED}")


@contextmanager
def _reading(path: Path, fmt: str):
    """Errors of tifffile and zarr (many types, for damaged or foreign files) as one line."""
    try:
        yield
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ImageError(f"cannot read {path.name} ({reason}) — check that it is a valid "
                         f"{'zarr store' if fmt == 'zarr' else 'TIFF file'}") from None


def _open_zarr(path: Path):
    """(array, its OME-Zarr metadata or None, the node opened): a zarr array, or the finest level
    of an OME-Zarr image whose axes the restorers can use; any other group is refused."""
    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node, None, node
    attrs = dict(node.attrs)
    if "bioformats2raw.layout" in attrs and "0" in node:  # bioformats2raw: the first image
        node, attrs = node["0"], dict(node["0"].attrs)
    try:
        multiscale = ome_zarr.read_multiscale(attrs)
    except ValueError as e:
        raise ImageError(f"{path.name} {e}") from None
    if multiscale is None:
        arrays = sorted(name for name, _ in node.arrays())
        hint = (f"give the array inside it ({path.name}/{arrays[0]})" if arrays else
                "give an OME-Zarr image or a zarr array")
        raise ImageError(f"{path.name} is a zarr group but not an OME-Zarr image (no multiscales metadata) — {hint}")
    if multiscale.paths[0] not in node or not isinstance(node[multiscale.paths[0]], zarr.Array):
        raise ImageError(f"{path.name}: its OME-Zarr metadata names level {multiscale.paths[0]!r}, which is not "
                         "an array in the store — check the store")
    array = node[multiscale.paths[0]]
    if array.ndim != len(multiscale.axes):
        raise ImageError(f"{path.name} has {len(multiscale.axes)} axes in its OME-Zarr metadata but a "
                         f"{array.ndim}-dimensional array — check the store")
    return array, multiscale, node


@contextmanager
def _opened(path: str | os.PathLike):
    """The checked source behind ``path``: a lazy zarr array, or an open TiffFile."""
    path = Path(path)
    fmt = image_format(path)
    if not path.exists():
        raise ImageError(f"{path} does not exist — check the path")
    with _reading(path, fmt):
        if fmt == "zarr":
            yield _open_zarr(path)[0]
            return
        with tifffile.TiffFile(path) as tif:
            _check_tiff(tif, path)
            yield tif


def read_image(path: str | os.PathLike):
    """A TIFF as a numpy array; a zarr store as a lazy zarr array (read slice by slice later)."""
    with _opened(path) as source:
        return source.asarray() if isinstance(source, tifffile.TiffFile) else source


def image_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape :func:`read_image` would give, reading metadata only; refuses the same inputs."""
    with _opened(path) as source:
        return tuple(source.series[0].shape if isinstance(source, tifffile.TiffFile) else source.shape)


def _check_tiff(tif: tifffile.TiffFile, path: Path) -> None:
    if not len(tif.pages) or not tif.series:
        raise ImageError(f"cannot read {path.name} (no image in it) — check that it is a valid TIFF file")
    if tif.series[0].keyframe.photometric == tifffile.PHOTOMETRIC.RGB:
        shape = tuple(tif.series[0].shape)
        raise ImageError(f"{path.name} is RGB {shape} — convert it to grayscale first")


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


def read_calibration(path: str | os.PathLike) -> Calibration | None:
    """The image's voxel size, units and origin in its axis order ((y, x) or (z, y, x)), or None
    when the file says nothing (no metadata, or unit voxels without units at the origin)."""
    path = Path(path)
    fmt = image_format(path)
    with _reading(path, fmt):
        if fmt == "zarr":
            array, multiscale, _ = _open_zarr(path)
            if multiscale is not None:
                calibration = multiscale.calibration
            else:
                size = array.attrs.get("voxel_size")  # a plain array: the package's older attribute
                calibration = Calibration.of(size[-array.ndim:]) if size else None
        else:
            with tifffile.TiffFile(path) as tif:
                ndim = min(len(tif.series[0].shape), 3)
                calibration = _ome_tiff_calibration(tif, ndim) or _imagej_calibration(tif, ndim) or \
                    _tag_calibration(tif.pages[0], ndim)
    return None if calibration is None or calibration.is_pixels else calibration


def read_voxel_size(path: str | os.PathLike) -> tuple[float, ...] | None:
    """Voxel size in the array's axis order ((y, x) or (z, y, x)), or None when the file has none."""
    calibration = read_calibration(path)
    return None if calibration is None else calibration.voxel_size


def _ome_tiff_calibration(tif: tifffile.TiffFile, ndim: int) -> Calibration | None:
    if not tif.is_ome:
        return None
    image = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
    pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
    axes = "ZYX"[-ndim:]
    sizes = [pixels.get(f"PhysicalSize{a}") for a in axes]
    if all(size is None for size in sizes):
        return None
    units = [space_unit(pixels.get(f"PhysicalSize{a}Unit", "µm")) if size is not None else None  # the schema's default
             for a, size in zip(axes, sizes)]
    plane = pixels.get("Plane") or {}
    plane = plane[0] if isinstance(plane, list) else plane  # the first plane's position: the origin
    translation = [convert(plane.get(f"Position{a}", 0.0), space_unit(plane.get(f"Position{a}Unit", unit)), unit)
                   for a, unit in zip(axes, units)]
    return Calibration.of([1.0 if size is None else float(size) for size in sizes], units,
                          [0.0 if t is None else t for t in translation])


def _imagej_calibration(tif: tifffile.TiffFile, ndim: int) -> Calibration | None:
    meta = tif.imagej_metadata
    if not meta:
        return None
    xres, yres = tif.pages[0].resolution
    unit = meta.get("unit")
    sizes = (float(meta.get("spacing", 1.0)), 1.0 / yres if yres else 1.0, 1.0 / xres if xres else 1.0)
    units = (meta.get("zunit", unit), meta.get("yunit", unit), unit)
    origins = (meta.get(f"{a}origin", 0.0) for a in "zyx")  # ImageJ's origin is in pixels
    translation = [0.0 - float(o) * s for o, s in zip(origins, sizes)]
    return Calibration.of(sizes[-ndim:], units[-ndim:], translation[-ndim:])


def _tag_calibration(page, ndim: int) -> Calibration | None:
    xres, yres = page.resolution
    if not xres or not yres or (xres, yres) == (1.0, 1.0):
        return None
    unit = _RESOLUTION_UNITS.get(page.resolutionunit)
    return Calibration.of((1.0, 1.0 / yres, 1.0 / xres)[-ndim:], (None, unit, unit)[-ndim:])


def read_about(path: str | os.PathLike) -> dict | None:
    """What a file the package wrote holds (``{"field": "std", "task": "denoise"}``), or None
    for any other file (or one that cannot be read)."""
    path = Path(path)
    try:
        if image_format(path) == "zarr":
            about = dict(zarr.open(str(path), mode="r").attrs).get(ABOUT)
        else:
            with tifffile.TiffFile(path) as tif:
                text = (tif.imagej_metadata or {}).get("Info")
                if text is None and tif.is_ome:
                    image = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
                    text = (image[0] if isinstance(image, list) else image).get("Description")
                about = json.loads(text).get(ABOUT) if isinstance(text, str) and text.startswith("{") else None
    except Exception:  # noqa: BLE001 - not ours, or not readable: nothing to say
        return None
    return about if isinstance(about, dict) else None


def write_image(path: str | os.PathLike, array, voxel_size=None, like: str | os.PathLike | None = None, *,
                units=None, calibration: Calibration | None = None, about: dict | None = None,
                label: dict | None = None) -> Path:
    """Write a TIFF or an OME-Zarr image atomically. Its calibration is ``calibration``, else
    ``voxel_size`` (with ``units``: one for all axes or one per axis, any spelling), else
    ``like``'s (a path to the input the array came from) when that has one. zarr: an OME-Zarr
    (NGFF 0.5, zarr v3) image with pyramid levels when large. ``about`` says what the file holds
    (read back with :func:`read_about`); ``label`` (OME-Zarr ``image-label`` metadata) stores a
    labels image."""
    path = Path(path)
    fmt = image_format(path)
    array = np.asarray(array)
    if calibration is None and voxel_size is not None:
        calibration = Calibration.of(tuple(voxel_size)[-array.ndim:], units)
    if calibration is None and like is not None:
        calibration = read_calibration(like)
    if calibration is not None:
        calibration = calibration.fit(array.ndim)
    if fmt == "tiff":
        atomic_write(path, lambda tmp: _write_tiff(tmp, array, calibration, about, ome=_is_ome_tiff(path)))
        return path
    return atomic_directory(path, lambda tmp: _write_zarr(tmp, array, calibration, path.stem, about, label))


def _is_ome_tiff(path: Path) -> bool:
    return path.name.lower().endswith((".ome.tif", ".ome.tiff"))


def _write_tiff(path, array: np.ndarray, calibration: Calibration | None, about: dict | None, ome: bool) -> None:
    """ImageJ hyperstack metadata (the unit as ImageJ spells it, the z spacing, the origin), or
    OME-TIFF for an .ome.tif name or a data type ImageJ cannot hold (64-bit, signed 8/16-bit)."""
    axes = "ZYX"[-array.ndim:]
    metadata: dict = {"axes": axes}
    kwargs: dict = {"photometric": "minisblack", "software": SOFTWARE}
    note = json.dumps({ABOUT: about}) if about else None
    if ome or array.dtype not in IMAGEJ_DTYPES:
        if calibration is not None:
            for a, size, unit in zip(axes, calibration.voxel_size, calibration.units):
                metadata[f"PhysicalSize{a}"] = size
                metadata[f"PhysicalSize{a}Unit"] = unit_symbol(unit, "ome") or "pixel"
            if any(calibration.translation):  # each plane's position, in its axes' units
                planes = 1 if array.ndim == 2 else array.shape[0]
                origin = dict(zip(axes, calibration.translation))
                steps = dict(zip(axes, calibration.voxel_size))
                metadata["Plane"] = {f"Position{a}": [origin[a] + (i * steps[a] if a == "Z" else 0.0)
                                                      for i in range(planes)] for a in axes}
                metadata["Plane"].update({f"Position{a}Unit": [metadata[f"PhysicalSize{a}Unit"]] * planes
                                          for a in axes})
        if note:
            metadata["Description"] = note
        tifffile.imwrite(path, array, ome=True, metadata=metadata, **kwargs)
        return
    if calibration is not None:
        sizes = (1.0,) * (3 - array.ndim) + calibration.voxel_size
        units = (None,) * (3 - array.ndim) + calibration.units
        origins = (0.0,) * (3 - array.ndim) + calibration.translation
        kwargs["resolution"] = (1.0 / sizes[2], 1.0 / sizes[1])
        kwargs["resolutionunit"] = _RESOLUTION_TAGS.get(units[2], tifffile.RESUNIT.NONE)
        if units[2]:
            metadata["unit"] = unit_symbol(units[2])
        for axis, other in (("y", units[1]), ("z", units[0]))[: array.ndim - 1]:
            if other != units[2]:  # ImageJ takes ``unit`` for every axis without its own
                metadata[f"{axis}unit"] = unit_symbol(other) or "pixel"
        if array.ndim == 3:
            metadata["spacing"] = sizes[0]
        for axis, origin, size in zip("zyx", origins, sizes):
            if origin:
                metadata[f"{axis}origin"] = -origin / size
    if note:
        metadata["Info"] = note
    tifffile.imwrite(path, array, imagej=True, metadata=metadata, **kwargs)


def _write_zarr(path: Path, array: np.ndarray, calibration: Calibration | None, name: str, about: dict | None,
                label: dict | None) -> None:
    """An OME-Zarr image: the array at ``0``, then its pyramid levels."""
    chunks = (1,) * (array.ndim - 2) + (512, 512)
    group = ome_zarr.create_image(path, array.shape, array.dtype, chunks, calibration, name, label=label,
                                  attributes={ABOUT: about} if about else None)
    group["0"][...] = array
    ome_zarr.add_levels(path)
