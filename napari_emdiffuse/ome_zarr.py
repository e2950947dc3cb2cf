"""OME-Zarr images as the package writes and reads them.

Written: a zarr v3 image group with its full-resolution array at ``0`` (``dimension_names`` z, y,
x or y, x), OME-NGFF 0.5 attributes with space axes and their units (UDUNITS names), each
level's scale and translation, and pyramid levels ``1``, ``2``,
... (2 x 2 block mean in Y and X; block max for a labels image) added once the full resolution
is complete, until a level fits :data:`LEVEL_TILE` pixels. A labels image (the reliability mask)
carries ``image-label`` metadata. Read: any NGFF 0.4 / 0.5 multiscale image whose axes are all
space axes, at its first (finest) level.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import zarr

from .calibration import Calibration, space_unit

VERSION = "0.5"
LEVEL_TILE = 512  # pyramid levels are added until one is at most this many pixels in Y and X
AXES = ("z", "y", "x")


def level_calibration(calibration: Calibration, level: int) -> Calibration:
    """Level ``level``'s voxel size (2**level larger in Y and X) and translation (the centre of
    the level's first voxel: the centre of the 2**level x 2**level block it sums up)."""
    factor = np.array([1.0] * (calibration.ndim - 2) + [2.0 ** level] * 2)
    voxel = np.asarray(calibration.voxel_size) * factor
    translation = np.asarray(calibration.translation) + (voxel - np.asarray(calibration.voxel_size)) / 2
    return calibration.with_(voxel_size=voxel, translation=translation)


def ome_attributes(calibration: Calibration, name: str, levels: int = 1, label: dict | None = None) -> dict:
    """The group attributes of an image with ``levels`` levels ("0", "1", ...); a labels image
    has ``image-label`` metadata ``label``."""
    names = AXES[-calibration.ndim:]
    axes = [{"name": a, "type": "space", **({"unit": u} if u else {})} for a, u in zip(names, calibration.units)]
    datasets = []
    for level in range(levels):
        at = level_calibration(calibration, level)
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": list(at.voxel_size)},
            {"type": "translation", "translation": list(at.translation)}]})
    multiscale = {"name": name, "axes": axes, "datasets": datasets}
    if levels > 1:
        reduce = _reduction(label)
        multiscale.update(type=reduce, metadata={"description": f"2 x 2 block {reduce} in y and x per level"})
    ome = {"version": VERSION, "multiscales": [multiscale]}
    if label is not None:
        ome["image-label"] = dict(label)
    return {"ome": ome}


def _reduction(label: dict | None) -> str:
    """How a level sums up 2 x 2 voxels: an image's mean; a labels image's max (a voxel marked
    anywhere in the block stays marked)."""
    return "mean" if label is None else "max"


def create_image(path, shape, dtype, chunks, calibration: Calibration | None, name: str, *,
                 label: dict | None = None, attributes: dict | None = None) -> zarr.Group:
    """A new image group at ``path`` (replacing what is there) with an empty level ``0``;
    ``attributes`` are added to the group's (beside ``ome``)."""
    ndim = len(shape)
    calibration = Calibration.pixels(ndim) if calibration is None else calibration.fit(ndim)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    chunks = tuple(min(int(c), int(s)) for c, s in zip(chunks, shape))
    group.create_array("0", shape=tuple(shape), chunks=chunks, dtype=dtype, fill_value=0, dimension_names=AXES[-ndim:])
    group.attrs.update({**ome_attributes(calibration, name, label=label), **(attributes or {})})
    return group


@dataclass(frozen=True)
class Multiscale:
    """What a reader needs of an OME-Zarr image: its levels' paths (finest first), axis names,
    the finest level's calibration, and its ``image-label`` metadata if it is a labels image."""

    paths: tuple[str, ...]
    axes: tuple[str, ...]
    calibration: Calibration
    label: dict | None = None


def _vector(transforms, kind: str, ndim: int, default: float) -> np.ndarray:
    for transform in transforms or ():
        if transform.get("type") == kind:
            values = transform.get(kind)
            if values is None or len(values) != ndim:
                raise ValueError(f"has a {kind} of {0 if values is None else len(values)} values for {ndim} axes "
                                 "— check its OME-Zarr metadata")
            return np.asarray(values, dtype=float)
    return np.full(ndim, default)


def read_multiscale(attrs: dict) -> Multiscale | None:
    """The first multiscale image of an OME-Zarr group's attributes (NGFF 0.4 or 0.5), or None
    when there is none. Raises ValueError (a short reason) for metadata that cannot be used:
    malformed, or axes other than 2 or 3 space axes."""
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else None
    source = ome if ome is not None and "multiscales" in ome else attrs
    multiscales = source.get("multiscales")
    if not multiscales:
        return None
    try:
        multiscale = multiscales[0]
        axes = [a if isinstance(a, dict) else {"name": a} for a in multiscale["axes"]]
        names = tuple(str(a.get("name")) for a in axes)
        kinds = [a.get("type") or ("space" if a.get("name") in AXES else "unknown") for a in axes]
        if len(axes) not in (2, 3) or any(k != "space" for k in kinds):
            described = ", ".join(f"{n} ({k})" for n, k in zip(names, kinds))
            raise ValueError(f"has axes {described}: only 2 or 3 space axes (y, x or z, y, x) can be restored — "
                             "save one channel and time point as a (z, y, x) image first")
        ndim = len(axes)
        dataset = multiscale["datasets"][0]
        transforms = dataset.get("coordinateTransformations")
        scale = _vector(transforms, "scale", ndim, 1.0)
        translation = _vector(transforms, "translation", ndim, 0.0)
        common = multiscale.get("coordinateTransformations")  # applies after each dataset's
        common_scale = _vector(common, "scale", ndim, 1.0)
        translation = translation * common_scale + _vector(common, "translation", ndim, 0.0)
        calibration = Calibration(tuple(float(v) for v in scale * common_scale),
                                  tuple(space_unit(a.get("unit")) for a in axes), tuple(float(t) for t in translation))
        paths = tuple(str(d["path"]) for d in multiscale["datasets"])
    except ValueError:
        raise
    except (TypeError, KeyError, IndexError, AttributeError) as e:
        raise ValueError(f"has malformed OME-Zarr multiscales metadata ({type(e).__name__}: {e}) — check the "
                         "store's metadata") from None
    label = source.get("image-label")
    return Multiscale(paths, names, calibration, label if isinstance(label, dict) else None)


def _halve(block: np.ndarray, reduce: str) -> np.ndarray:
    """2 x 2 blocks in the last two axes to one value (an odd edge repeats its last row/column)."""
    h, w = block.shape[-2:]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
    block = np.pad(block, pad, mode="edge") if h % 2 or w % 2 else block
    blocks = block.reshape(*block.shape[:-2], (h + 1) // 2, 2, (w + 1) // 2, 2)
    if reduce == "max":
        return blocks.max(axis=(-3, -1))
    mean = blocks.mean(axis=(-3, -1), dtype=np.float64)
    if np.issubdtype(block.dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(block.dtype)


def add_levels(path, tile: int | None = None) -> int:
    """Add pyramid levels to a finished image group, each 2 x 2 smaller in Y and X than the one
    before, until one fits ``tile`` pixels (default :data:`LEVEL_TILE`); read and written chunk
    by chunk, so a volume larger than memory never loads. The metadata lists them once all are
    written. Returns the number of levels (1: the image is small enough as it is). Levels
    already listed are kept."""
    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs)
    multiscale = read_multiscale(attrs)
    if len(multiscale.paths) > 1:
        return len(multiscale.paths)
    reduce, tile = _reduction(multiscale.label), tile or LEVEL_TILE
    previous = group["0"]
    levels = 1
    while max(previous.shape[-2:]) > tile:
        shape = (*previous.shape[:-2], *((n + 1) // 2 for n in previous.shape[-2:]))
        chunks = tuple(min(c, s) for c, s in zip(previous.chunks, shape))
        level = group.create_array(str(levels), shape=shape, chunks=chunks, dtype=previous.dtype, fill_value=0,
                                   overwrite=True, dimension_names=AXES[-len(shape):])
        for start in itertools.product(*(range(0, s, c) for s, c in zip(shape, chunks))):
            out = tuple(slice(a, min(a + c, s)) for a, c, s in zip(start, chunks, shape))
            source = out[:-2] + tuple(slice(2 * r.start, min(2 * r.stop, n))
                                      for r, n in zip(out[-2:], previous.shape[-2:]))
            level[out] = _halve(np.asarray(previous[source]), reduce)
        previous, levels = level, levels + 1
    if levels > 1:
        name = (attrs.get("ome") or attrs)["multiscales"][0].get("name", "")
        group.attrs.update(ome_attributes(multiscale.calibration, name, levels, multiscale.label))
    return levels

