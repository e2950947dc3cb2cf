"""Training examples of the tasks that need more than (condition, target) crops of aligned
images: super-resolution pairs made by binning, and isotropic reconstruction's examples from
the planes of a volume (vEMDiffuse-i from an isotropic volume, vEMDiffuse-a from the anisotropic
volume itself, resliced so a fine lateral axis plays z)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..normalize import Normalizer
from ..tasks.isotropic import interpolated_block, pad_depth
from ..tasks.superres import bin_mean, crop_to_multiple, upsample
from .data import augment

ROUTES = ("isotropic", "anisotropic")


# ---- super-resolution --------------------------------------------------------------------------
def training_pairs(high_res, scale: int = 2, low: float = 0.1, high: float = 99.9):
    """(condition, target) arrays for :class:`~napari_emdiffuse.training.data.PatchPairs` from
    high-resolution images (Y, X) or (N, Y, X): the low-resolution input is their ``scale`` x
    ``scale`` mean binning. Both are normalised with the low-resolution image's percentiles, as
    the restore core normalises its input at inference."""
    hr = crop_to_multiple(np.asarray(high_res, dtype=np.float32), scale)
    hr = hr[None] if hr.ndim == 2 else hr
    lr = bin_mean(hr, scale)
    norm = Normalizer.fit(lr, low, high)
    condition = upsample(norm(lr), scale)[:, None]
    target = norm(hr)[:, None]
    return condition, target


# ---- isotropic reconstruction ------------------------------------------------------------------
def planes_along(volume, route: str = "isotropic", lateral_axis: int = 1) -> np.ndarray:
    """The stack of planes a model learns to interpolate between: z planes of an isotropic volume,
    or, for the anisotropic route, the volume resliced along a lateral axis (1 = y, 2 = x), whose
    planes (Z, X) or (Z, Y) are at the fine lateral spacing."""
    if route not in ROUTES:
        raise ValueError(f"unknown training route {route!r}: use 'isotropic' (from an isotropic volume) "
                         "or 'anisotropic' (from the anisotropic volume itself)")
    volume = np.asarray(volume)
    if route == "isotropic":
        return volume
    if lateral_axis not in (1, 2):
        raise ValueError(f"lateral_axis must be 1 (y) or 2 (x), got {lateral_axis}")
    return np.moveaxis(volume, lateral_axis, 0)


def slice_triplets(planes: np.ndarray, z_factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """vEMDiffuse training examples from consecutive planes (N, H, W): for every anchor a and
    offset k in 1..f-1, condition ``[plane a+f, plane a]``, target plane a+k, slice index k-1.
    Returns condition (M, 2, H, W), target (M, 1, H, W), slice_index (M,) float32."""
    f = int(z_factor)
    n = len(planes)
    if n < f + 1:
        raise ValueError(f"{n} planes are too few for z-factor {f}: at least {f + 1} are needed")
    anchors = np.repeat(np.arange(n - f), f - 1)
    offsets = np.tile(np.arange(1, f), n - f)
    condition = np.stack([planes[anchors + f], planes[anchors]], axis=1)
    target = planes[anchors + offsets][:, None]
    return condition, target, (offsets - 1).astype(np.float32)


def block_pairs(planes: np.ndarray, z_factor: int, depth_multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """3D-variant examples: condition = the linear interpolation between planes a and a+f over
    the f+1 positions of the gap, target = the true planes a..a+f; depth padded to a multiple of
    ``depth_multiple`` (the network's downsampling) by repeating the upper acquired plane.
    Returns (M, 1, D, H, W) twice."""
    f = int(z_factor)
    n = len(planes)
    if n < f + 1:
        raise ValueError(f"{n} planes are too few for z-factor {f}: at least {f + 1} are needed")
    conds = np.stack([interpolated_block(planes[a], planes[a + f], f, depth_multiple) for a in range(n - f)])
    targets = np.stack([pad_depth(planes[a:a + f + 1], depth_multiple) for a in range(n - f)])
    return conds[:, None], targets[:, None]


def volume_examples(volume, z_factor: int, route: str = "isotropic", lateral_axis: int = 1,
                  low: float = 0.1, high: float = 99.9, dims: int = 2, depth_multiple: int = 1,
                  both_directions: bool = True) -> dict:
    """Normalised training examples for either route: ``condition``, ``target`` and (2D
    network) ``slice_index``. The normaliser is fitted on the whole volume, as at inference.
    ``both_directions`` also takes the planes in reverse order: the physics has no preferred
    direction along the cutting axis, so this doubles the examples for free."""
    planes = planes_along(volume, route, lateral_axis)
    planes = Normalizer.fit(planes, low, high)(planes)
    stacks = [planes, planes[::-1]] if both_directions else [planes]
    if dims == 3:
        parts = [block_pairs(p, z_factor, depth_multiple) for p in stacks]
        return {"condition": np.concatenate([c for c, _ in parts]), "target": np.concatenate([t for _, t in parts])}
    parts = [slice_triplets(p, z_factor) for p in stacks]
    return {"condition": np.concatenate([p[0] for p in parts]), "target": np.concatenate([p[1] for p in parts]),
            "slice_index": np.concatenate([p[2] for p in parts])}


@dataclass
class BlockPairs:
    """Random (D, patch, patch) crops of aligned 3D blocks (N, 1, D, H, W) for the 3D variant,
    with the same flips and rotations in the lateral plane as the 2D patches."""

    condition: np.ndarray
    target: np.ndarray
    patch: int = 64

    def __post_init__(self):
        h, w = self.condition.shape[-2:]
        self.patch = min(self.patch, int(min(h, w)) // 8 * 8)
        if self.patch < 16:
            raise ValueError(f"training planes of {h}x{w} pixels are too small: at least 16x16 needed")

    def draw(self, batch: int, rng: np.random.Generator) -> dict:
        n, _, _, h, w = self.condition.shape
        conds, targets = [], []
        for _ in range(batch):
            i = int(rng.integers(n))
            y, x = int(rng.integers(h - self.patch + 1)), int(rng.integers(w - self.patch + 1))
            win = (Ellipsis, slice(y, y + self.patch), slice(x, x + self.patch))
            c, t = augment([self.condition[i][win], self.target[i][win]], rng)
            conds.append(c)
            targets.append(t)
        return {"condition": torch.from_numpy(np.stack(conds)).float(),
                "target": torch.from_numpy(np.stack(targets)).float()}

    def fixed_batch(self, batch: int, seed: int = 1234) -> dict:
        return self.draw(batch, np.random.default_rng(seed))
