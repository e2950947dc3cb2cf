"""Isotropic reconstruction of anisotropic volumes (vEMDiffuse).

For a z-factor f, the f-1 slices between each pair of acquired slices i, i+1 are generated,
conditioned on both, so a volume of n slices becomes (n-1)*f+1 slices; the acquired slices pass
through unchanged. A unit of this task is a gap (the slices between i and i+1).

Two networks, one UNet definition:

* the EMDiffuse-compatible 2D network (vEMDiffuse): input ``concat([slice i+1, slice i, y_t])``
  and a slice embedding of which intermediate slice is generated. The index is 0-based, as
  vEMDiffuse's ``channel_index``: index k-1 generates the slice at k/f of the gap, so published
  vEMDiffuse checkpoints work unchanged. All f-1 slices (times the samples) of a gap are one
  batch of states of the tiled sampler.
* a true 3D variant (``network.dims: 3``): the whole gap, acquired ends included, as one block
  of depth f+1 conditioned on the linear interpolation between the ends, so the generated slices
  are consistent with each other in z too.

Training examples (from an isotropic volume, or from the anisotropic volume itself resliced
along a lateral axis) are built in :mod:`napari_emdiffuse.training.pairs`.
"""
from __future__ import annotations

import argparse
from typing import Iterator, Sequence

import numpy as np

from ..results import FIELDS, RestoreResult, acquired_value
from .base import ENSEMBLE_STREAM, Geometry, Task, Unit, dihedral, positive_int


# ---- geometry and baseline ---------------------------------------------------------------------
def output_depth(n_slices: int, z_factor: int) -> int:
    return (n_slices - 1) * z_factor + 1


def check_volume(shape: Sequence[int], z_factor: int) -> None:
    shape = tuple(shape)
    if len(shape) != 3:
        raise ValueError(f"isotropic reconstruction needs a volume (Z, Y, X), got {len(shape)} dimensions "
                         f"{shape} — give a stack of at least 2 slices (for a 2D image use `emdiffuse superres` "
                         "or `denoise`)")
    if shape[0] < 2:
        raise ValueError(f"the volume has {shape[0]} slice: at least 2 are needed to generate "
                         "the slices between them")
    if int(z_factor) < 2:
        raise ValueError(f"z-factor must be at least 2, got {z_factor}: it is the number of output "
                         "slices per acquired slice spacing (e.g. 5 for 50 nm sections at 10 nm pixels)")


def linear_interpolation(volume, z_factor: int) -> np.ndarray:
    """The baseline: linear interpolation along z to (n-1)*f+1 slices (float32)."""
    vol = np.asarray(volume, dtype=np.float32)
    n, f = len(vol), int(z_factor)
    pos = np.arange(output_depth(n, f)) / f
    lo = np.minimum(np.floor(pos).astype(int), n - 2)
    w = (pos - lo).astype(np.float32)[:, None, None]
    return (1 - w) * vol[lo] + w * vol[lo + 1]


def subsample(volume, z_factor: int, axis: int = 0) -> np.ndarray:
    """Every f-th plane along ``axis``: what an acquisition f times coarser there would keep."""
    index = [slice(None)] * np.ndim(volume)
    index[axis] = slice(None, None, int(z_factor))
    return np.asarray(volume)[tuple(index)]


def pad_depth(block: np.ndarray, multiple: int) -> np.ndarray:
    """Repeat the last plane until the depth is a multiple of ``multiple`` (the 3D network's downsampling)."""
    depth = -(-len(block) // multiple) * multiple
    return np.concatenate([block, np.repeat(block[-1:], depth - len(block), axis=0)])


def interpolated_block(lower: np.ndarray, upper: np.ndarray, f: int, multiple: int) -> np.ndarray:
    """The 3D variant's condition: the linear interpolation over the gap's f+1 positions."""
    w = (np.arange(f + 1, dtype=np.float32) / f)[:, None, None]
    return pad_depth((1 - w) * lower[None] + w * upper[None], multiple)


def model_z_factor(model) -> int | None:
    value = (model.card.get("isotropic") or {}).get("z_factor")
    return None if value is None else int(value)


def resolve_z_factor(model, z_factor: int | None) -> int:
    """The z-factor to use: the caller's, checked against the model's training factor."""
    trained = model_z_factor(model)
    if z_factor is None:
        if trained is None:
            raise ValueError(f"model {model.name!r} does not say which z-factor it was trained for — "
                             "pass it (--z-factor F)")
        return trained
    z_factor = int(z_factor)
    if trained is not None and z_factor != trained:
        raise ValueError(f"model {model.name!r} generates {trained - 1} slices per gap (z-factor {trained}), "
                         f"not z-factor {z_factor} — pass --z-factor {trained} or train a model for {z_factor}")
    return z_factor


def ensemble_member(m: int) -> tuple[int, bool]:
    """The m-th view of a gap: (lateral rotation 0-3, z reversed). Even members keep the cutting
    direction, odd ones swap the two acquired slices, so any E >= 2 averages both directions."""
    return m // 2, bool(m % 2)


class FoldedNetwork:
    """A 3D UNet seen by the 2D tiled machinery: (B, C*D, H, W) in, (B, D, H, W) out, so the
    sampler's state is the gap's block with depth as channels."""

    aleatoric = False

    def __init__(self, network, depth: int):
        self.network, self.depth = network, depth

    def __call__(self, x, noise_level, slice_index=None):
        b, cd, h, w = x.shape
        out = self.network(x.reshape(b, cd // self.depth, self.depth, h, w), noise_level)
        return out[:, :1].reshape(b, self.depth, h, w)


def _three_d(model) -> bool:
    return getattr(model.network, "dims", 2) == 3


class Isotropic(Task):
    name = "isotropic"
    label = "isotropic reconstruction"
    widget = "isotropic"
    default_model = "isotropic-fibsem"
    summary = "generate the slices between acquired slices of a volume (TIFF or zarr)"
    description = ("Isotropic reconstruction: generate the F-1 slices between each pair of acquired slices of a "
                   "(Z, Y, X) volume, so n slices become (n-1)*F+1 with a z spacing F times smaller (written into "
                   "OUTPUT's metadata). Acquired slices pass through unchanged. With 2 or more samples the "
                   "per-voxel standard deviation (0 at acquired slices) is written next to OUTPUT as OUTPUT_std.")
    trained_description = "isotropic-reconstruction model trained on the user's volume"
    unit_is_plane = False
    training_summary = "from a volume (isotropic, or the anisotropic one itself)"
    training_description = ("Train an isotropic-reconstruction model (vEMDiffuse) that generates the F-1 slices between "
                            "two acquired ones. By default VOLUME is isotropic and its z planes are subsampled; with "
                            "--anisotropic it is the anisotropic volume itself, resliced so a lateral axis plays z.")
    training_inputs = (("volume", "volume"),)
    training_options = ("z_factor", "anisotropic")

    # ---- geometry -------------------------------------------------------------------------------
    def geometry(self, model, z_factor: int | None = None, **_) -> Geometry:
        return Geometry(z_factor=resolve_z_factor(model, z_factor))

    def check_input(self, shape: Sequence[int], geometry: Geometry) -> None:
        check_volume(shape, geometry.z_factor)

    def output_shape(self, shape: Sequence[int], geometry: Geometry) -> tuple[int, ...]:
        return (output_depth(shape[0], geometry.z_factor), *tuple(shape)[1:])

    def units(self, shape: Sequence[int], geometry: Geometry) -> list[int]:
        return list(range(shape[0] - 1))

    def out_planes(self, gap: int, geometry: Geometry) -> range:
        f = geometry.z_factor
        return range(gap * f + 1, (gap + 1) * f)

    def passthrough(self, out_z: range, geometry: Geometry) -> list[tuple[int, int]]:
        f = geometry.z_factor
        return [(z, z // f) for z in out_z if z % f == 0]

    # ---- conditioning ------------------------------------------------------------------------------
    def unit(self, model, read, index: int, geometry: Geometry, samples: int, origin_z: int = 0) -> Unit:
        f, key = geometry.z_factor, origin_z + index
        lower, upper = read(index), read(index + 1)
        if _three_d(model):
            block = interpolated_block(lower, upper, f, model.network.downsample_factor)
            depth = len(block)
            return Unit(key, block[None], [(key, j) for j in range(samples)], planes=f - 1, channels=depth,
                        network=FoldedNetwork(model.network, depth),
                        split=lambda t: t[:, 1:f].transpose(0, 1))  # (S, D, H, W) -> (f-1, S, H, W)
        return Unit(key, np.stack([upper, lower])[None],  # vEMDiffuse: [slice i+1, slice i]
                    [(key, k, j) for k in range(1, f) for j in range(samples)], planes=f - 1,
                    slice_index=np.array([k - 1 for k in range(1, f) for _ in range(samples)], dtype=np.float32))

    def views(self, model, unit: Unit, count: int) -> Iterator[Unit]:
        """Lateral rotations, and the gap seen from the other side (the acquired slices swapped,
        the slice index mirrored); none for the 3D network."""
        if _three_d(model):
            return
        f = unit.planes + 1
        upper, lower = unit.condition[0]
        for m in range(1, count):
            turn, reverse = ensemble_member(m)
            cond = np.stack([lower, upper] if reverse else [upper, lower])[None]
            # row k-1 is the slice at k/f above ``lower`` in both views: f-k above ``upper`` when reversed
            index = np.array([(f - k if reverse else k) - 1 for k in range(1, f)], dtype=np.float32)
            yield Unit(unit.key, np.ascontiguousarray(dihedral(cond, turn)),
                       [(unit.key, ENSEMBLE_STREAM + m, k) for k in range(1, f)], planes=f - 1,
                       slice_index=index, turn=turn)

    def view_shape(self, shape: tuple[int, int], view: int) -> tuple[int, int]:
        return tuple(shape)[::-1] if ensemble_member(view)[0] % 2 else tuple(shape)

    def info(self, model, gap: int, geometry: Geometry) -> dict:
        return {"gap": gap, "z_factor": geometry.z_factor, "network": "3d" if _three_d(model) else "2d"}

    # ---- assembling a whole result -----------------------------------------------------------------
    def assemble(self, image, finished: list[tuple[int, RestoreResult]], geometry: Geometry) -> RestoreResult:
        """Acquired slices 0..k interleaved with the k finished gaps (which come in order):
        ``mean`` ((k)*f+1, Y, X) in the volume's dtype with acquired slice i at output slice i*f,
        ``std`` / ``aleatoric`` / ``mask`` zero there. ``info["voxel_scale"]`` is (1/f, 1, 1)."""
        f = geometry.z_factor
        parts = [r for _, r in finished]
        acquired = [np.asarray(image[i]) for i in range(len(parts) + 1)]
        out = {}
        for name in FIELDS:
            values = [getattr(p, name) for p in parts]
            if any(v is None for v in values):
                out[name] = None
                continue
            planes = [acquired_value(name, plane) for plane in acquired]
            stack = np.empty((output_depth(len(acquired), f), *acquired[0].shape), dtype=values[0].dtype)
            for i, plane in enumerate(planes):
                stack[i * f] = plane
            for i, v in enumerate(values):
                stack[i * f + 1:(i + 1) * f] = v
            out[name] = stack
        info = {k: v for k, v in parts[0].info.items() if k != "gap"}
        info.update(gaps=len(parts), voxel_scale=geometry.voxel_scale(3), acquired=[i * f for i in range(len(acquired))])
        return RestoreResult(**out, info=info)

    # ---- command line ------------------------------------------------------------------------------
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--z-factor", type=positive_int, default=None, metavar="F",
                            help="output slices per acquired spacing; must be the model's (default: the model's, "
                                 "5 for the bundled one)")

    def params(self, args: argparse.Namespace) -> dict:
        return {"z_factor": args.z_factor}

    # ---- training ------------------------------------------------------------------------------------
    def add_training_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--volume", required=True, metavar="V", help="the volume (Z, Y, X), TIFF or zarr")
        parser.add_argument("--z-factor", type=positive_int, required=True, metavar="F",
                            help="output slices per acquired slice spacing (e.g. 5 for 50 nm sections at 10 nm pixels)")
        parser.add_argument("--anisotropic", action="store_true",
                            help="VOLUME is the anisotropic volume itself (vEMDiffuse-a route)")

    def training_arguments(self, args: argparse.Namespace) -> dict:
        return {"volume": args.volume, "z_factor": args.z_factor, "anisotropic": args.anisotropic}

    def training_data(self, normalization: dict | None = None, **inputs):
        from ..training.datasets import isotropic_data  # lazily: training brings torch, the registry stays light

        return isotropic_data(normalization=normalization, **inputs)


ISOTROPIC = Isotropic()
