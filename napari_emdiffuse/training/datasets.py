"""Training data for each task, from arrays (napari layers) or files.

Every builder normalises the images as inference will (one :class:`Normalizer` per image or
stack, from the model card's percentiles), holds out a *region* for validation (a band at the
end of one axis, ``gap`` pixels away from the training region, so no validation crop overlaps a
training crop), and returns a :class:`TrainingData` whose ``train`` / ``val`` the
:class:`~napari_emdiffuse.training.trainer.Trainer` draws from.

- denoise: noisy/clean pairs (2D images or (Z, Y, X) stacks); each pair's registration is
  checked, and a misregistered pair is an error (:class:`MisregisteredError`) unless
  ``register=True`` aligns it.
- superres: high-resolution images only; the condition is made by binning
  (:mod:`napari_emdiffuse.tasks.superres`).
- isotropic: one volume; condition = two acquired slices, target = the slice between them
  (:mod:`napari_emdiffuse.tasks.isotropic`), isotropic or anisotropic route.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..io import check_image, read_image
from ..model import DEFAULT_NORMALIZATION
from ..normalize import Normalizer
from ..tasks.isotropic import check_volume
from .data import PatchPairs, PatchSet, _stacked, augment, patch_set
from .pairs import planes_along, slice_triplets, training_pairs
from .registration import Registration, check_pair, register_pair

GAP = 16  # pixels between the training and the validation region
MAX_CHECKED_SLICES = 8  # registration is checked on this many evenly spaced slices of a stack


class MisregisteredError(ValueError):
    """A noisy/clean pair is not registered; ``reports`` says how far off each checked slice is."""

    def __init__(self, message: str, reports: list[Registration]):
        super().__init__(message)
        self.reports = reports


@dataclass
class TrainingData:
    """What a training run needs from the data, and what its model card should record."""

    task: str
    train: PatchPairs | PatchSet
    val: PatchPairs | PatchSet
    condition_channels: int = 1
    slice_embedding: bool = False
    card: dict = field(default_factory=dict)  # task sections for the model card (e.g. superres.scale)
    info: dict = field(default_factory=dict)  # what the data was, for card["training"]["data"]
    registration: list[Registration] = field(default_factory=list)  # of the pairs as used (after any alignment)
    aligned: int = 0  # images (pairs or slices) that had to be registered


# ---- inputs ------------------------------------------------------------------------------------
def as_array(image, name: str = "the image") -> np.ndarray:
    """An image given as an array or a path (TIFF or zarr), checked, as a numpy array."""
    if isinstance(image, (str, os.PathLike)):
        name = Path(image).name
        image = read_image(image)
    image = np.asarray(image)
    check_image(image, name)
    return image


def _as_list(images) -> list:
    return list(images) if isinstance(images, (list, tuple)) else [images]


def _normalizer(image: np.ndarray, normalization: dict | None) -> Normalizer:
    norm = {**DEFAULT_NORMALIZATION, **(normalization or {})}
    return Normalizer.for_card(image, norm)


# ---- the validation region ---------------------------------------------------------------------
def split_region(length: int, patch: int, val_fraction: float, gap: int = GAP) -> tuple[slice, slice]:
    """Training and validation ranges along one axis: the validation band is the last
    ``val_fraction`` (at least one patch), ``gap`` away from the training range (at least one patch)."""
    n_val = max(int(round(length * val_fraction)), patch)
    n_train = length - n_val - gap
    if n_train < patch:
        raise ValueError(f"images {length} pixels long are too small for {patch}-pixel patches with a "
                         f"held-out validation band: use a smaller patch size (at most "
                         f"{max(16, (length - gap) // 2 // 8 * 8)}) or larger images")
    return slice(0, n_train), slice(length - n_val, length)


def _split_axis(shape: Sequence[int]) -> int:
    """Hold out along the longer of the last two axes (-2 rows, -1 columns)."""
    return -2 if shape[-2] >= shape[-1] else -1


def _take(array: np.ndarray, axis: int, where: slice) -> np.ndarray:
    index = [slice(None)] * array.ndim
    index[axis] = where
    return array[tuple(index)]


# ---- denoise -----------------------------------------------------------------------------------
def _register_stack(noisy: np.ndarray, clean: np.ndarray, register: bool, check: bool,
                    where: str) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[Registration], int]:
    """The pair as a list of same-sized (noisy, clean) stacks, registered if asked, with the
    registration of each checked slice as used and how many slices were aligned."""
    if noisy.shape != clean.shape:
        raise ValueError(f"{where}: noisy {noisy.shape} and clean {clean.shape} differ in size — "
                         "give pairs of the same field of view and size")
    planes = [(noisy, clean)] if noisy.ndim == 2 else [(noisy[z], clean[z]) for z in range(len(noisy))]
    if not check and not register:
        return [(noisy, clean)], [], 0
    checked = range(len(planes)) if register else np.unique(
        np.linspace(0, len(planes) - 1, min(len(planes), MAX_CHECKED_SLICES)).round().astype(int))
    reports, bad = [], []
    for z in checked:
        report = check_pair(*planes[z])
        reports.append(report)
        if not report.registered:
            bad.append(int(z))
    if not bad:
        return [(noisy, clean)], reports, 0
    if not register:
        first = reports[list(checked).index(bad[0])]
        slices = "" if noisy.ndim == 2 else f" (slice {bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''})"
        raise MisregisteredError(f"{where}{slices}: {first.message}", reports)
    # Registration crops each slice differently: a registered slice becomes its own image.
    out, kept = [], [z for z in range(len(planes)) if z not in bad]
    if kept:
        out.append((noisy[kept] if noisy.ndim == 3 else noisy, clean[kept] if clean.ndim == 3 else clean))
    for z in bad:
        fixed = register_pair(*planes[z])
        reports[list(checked).index(z)] = fixed.after
        out.append((fixed.condition, fixed.target))
    return out, reports, len(bad)


def denoise_data(noisy, clean, *, patch: int = 128, val_fraction: float = 0.2, gap: int = GAP,
                 normalization: dict | None = None, check: bool = True, register: bool = False,
                 extra_noise: float = 0.0, intensity_jitter: float = 0.0) -> TrainingData:
    """Pairs of noisy (condition) and clean (target) images: arrays or paths, 2D or stacks, one
    pair or lists of pairs."""
    noisy_list, clean_list = _as_list(noisy), _as_list(clean)
    if len(noisy_list) != len(clean_list):
        raise ValueError(f"{len(noisy_list)} noisy images but {len(clean_list)} clean ones — give them in pairs")
    train_parts, val_parts, reports, sources, aligned = [], [], [], [], 0
    for i, (n, c) in enumerate(zip(noisy_list, clean_list)):
        where = f"pair {i + 1}" if len(noisy_list) > 1 else "the pair"
        sources.append({"noisy": _describe(n), "clean": _describe(c)})
        n, c = as_array(n, "the noisy image"), as_array(c, "the clean image")
        stacks, pair_reports, pair_aligned = _register_stack(n, c, register, check, where)
        reports += pair_reports
        aligned += pair_aligned
        for sn, sc in stacks:
            cond, target = _normalizer(sn, normalization)(sn), _normalizer(sc, normalization)(sc)
            cond, target = cond.reshape(-1, 1, *cond.shape[-2:]), target.reshape(-1, 1, *target.shape[-2:])
            axis = _split_axis(cond.shape)
            train_where, val_where = split_region(cond.shape[axis], patch, val_fraction, gap)
            train_parts.append(PatchPairs(_take(cond, axis, train_where), _take(target, axis, train_where),
                                          patch, extra_noise, intensity_jitter))
            val_parts.append(PatchPairs(_take(cond, axis, val_where), _take(target, axis, val_where), patch))
    info = {"task": "denoise", "pairs": sources, "patch": patch, "validation": _validation_note(val_fraction, gap),
            "aligned": aligned, "extra_noise": extra_noise, "intensity_jitter": intensity_jitter}
    return TrainingData("denoise", patch_set(train_parts), patch_set(val_parts), 1, info=info,
                        registration=reports, aligned=aligned)


def _describe(image) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return f"array {'x'.join(map(str, np.shape(image)))} {np.asarray(image).dtype}"


def _validation_note(val_fraction: float, gap: int) -> str:
    return (f"the last {val_fraction:.0%} (at least one patch) of the longer image axis, "
            f"{gap} px from the training region")


# ---- super-resolution --------------------------------------------------------------------------
def superres_data(high_res, *, scale: int = 2, patch: int = 128, val_fraction: float = 0.2, gap: int = GAP,
                  normalization: dict | None = None, intensity_jitter: float = 0.0) -> TrainingData:
    """High-resolution images (arrays or paths, 2D or stacks, one or a list): the condition is
    the bicubic upsampling of their ``scale`` x ``scale`` binning, the target the image itself."""
    norm = {**DEFAULT_NORMALIZATION, **(normalization or {})}
    scale = int(scale)
    if scale < 2:
        raise ValueError(f"the super-resolution scale must be at least 2, got {scale}")
    train_parts, val_parts, sources = [], [], []
    for image in _as_list(high_res):
        sources.append(_describe(image))
        cond, target = training_pairs(as_array(image, "the high-resolution image"), scale, norm["low"], norm["high"])
        # Pairs are made from the whole image, then split: the gap keeps the bicubic support of
        # the validation band's condition away from the training region.
        axis = _split_axis(cond.shape)
        train_where, val_where = split_region(cond.shape[axis], patch, val_fraction, gap)
        train_parts.append(PatchPairs(_take(cond, axis, train_where), _take(target, axis, train_where),
                                      patch, intensity_jitter=intensity_jitter))
        val_parts.append(PatchPairs(_take(cond, axis, val_where), _take(target, axis, val_where), patch))
    info = {"task": "superres", "images": sources, "patch": patch, "validation": _validation_note(val_fraction, gap),
            "degradation": f"{scale}x{scale} mean binning, then bicubic x{scale} upsampling as the condition"}
    card = {"superres": {"scale": scale, "degradation": f"{scale}x{scale} mean binning"}}
    return TrainingData("superres", patch_set(train_parts), patch_set(val_parts), 1, card=card, info=info)


# ---- isotropic reconstruction ------------------------------------------------------------------
class SlicePatches:
    """vEMDiffuse examples cut lazily from normalised planes (N, H, W), so a large volume is never
    copied once per example: a random anchor plane a (planes taken in either order), a random
    intermediate offset and a random crop; condition, target and slice index as
    :func:`.pairs.slice_triplets` defines them."""

    def __init__(self, planes: np.ndarray, z_factor: int, patch: int = 128, both_directions: bool = True):
        self.planes, self.z_factor, self.both_directions = planes, int(z_factor), both_directions
        n, h, w = planes.shape
        if n < self.z_factor + 1:
            raise ValueError(f"{n} planes are too few for z-factor {self.z_factor}: at least "
                             f"{self.z_factor + 1} are needed — use a smaller z-factor or a larger volume")
        self.patch = min(int(patch), min(h, w) // 8 * 8)
        if self.patch < 16:
            raise ValueError(f"planes of {h}x{w} pixels are too small to train on: at least 16x16 needed")

    def draw(self, batch: int, rng: np.random.Generator, rows: slice | None = None) -> dict:
        """``batch`` examples, or only ``rows`` of them (``rng`` moves on as for all ``batch``)."""
        f, p = self.z_factor, self.patch
        n, h, w = self.planes.shape
        kept = range(batch)[rows] if rows is not None else range(batch)
        conds, targets, index = [], [], []
        for k in range(batch):
            keep = k in kept
            a = int(rng.integers(n - f))
            y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
            reverse = self.both_directions and rng.integers(2)
            if keep:
                window = self.planes[a:a + f + 1, y:y + p, x:x + p]
                cond, target, slice_index = slice_triplets(window[::-1] if reverse else window, f)
            j = int(rng.integers(f - 1))
            pair = augment([cond[j], target[j]] if keep else [], rng)
            if keep:
                conds.append(pair[0])
                targets.append(pair[1])
                index.append(slice_index[j])
        return {"condition": _stacked(conds, (2, p, p)), "target": _stacked(targets, (1, p, p)),
                "slice_index": torch.tensor(index, dtype=torch.float32)}

    def fixed_batch(self, batch: int, seed: int = 1234) -> dict:
        return self.draw(batch, np.random.default_rng(seed))


def isotropic_data(volume, *, z_factor: int, anisotropic: bool = False, lateral_axis: int = 1, patch: int = 128,
                   val_fraction: float = 0.2, gap: int = GAP, normalization: dict | None = None) -> TrainingData:
    """A volume (Z, Y, X), array or path. Isotropic route: it is isotropic and its z planes,
    subsampled by ``z_factor``, are the examples (vEMDiffuse-i). Anisotropic route: it is the
    anisotropic volume itself, resliced along ``lateral_axis`` so a fine lateral axis plays z
    (vEMDiffuse-a). The validation region is a band of the planes' longer axis."""
    route = "anisotropic" if anisotropic else "isotropic"
    vol = as_array(volume, "the volume")
    check_volume(vol.shape, z_factor)
    planes = planes_along(vol, route, lateral_axis)
    planes = _normalizer(planes, normalization)(planes)  # the whole volume's percentiles, as at inference
    axis = _split_axis(planes.shape)
    train_where, val_where = split_region(planes.shape[axis], min(patch, min(planes.shape[-2:]) // 8 * 8),
                                          val_fraction, gap)
    train = SlicePatches(_take(planes, axis, train_where), z_factor, patch)
    val = SlicePatches(_take(planes, axis, val_where), z_factor, patch, both_directions=False)
    info = {"task": "isotropic", "volume": _describe(volume), "route": route, "z_factor": int(z_factor),
            "patch": train.patch, "validation": _validation_note(val_fraction, gap)}
    card = {"isotropic": {"z_factor": int(z_factor), "route": route, "slice_index": "0-based (k-1 for the slice at k/f)"}}
    return TrainingData("isotropic", train, val, 2, slice_embedding=True, card=card, info=info)


def registration_summary(noisy, clean) -> tuple[bool, str]:
    """Whether a pair (arrays or paths, 2D or stacks) is registered, and one line saying so: for
    a stack, its first misregistered slice, if any, among those training would check."""
    noisy, clean = as_array(noisy, "the noisy image"), as_array(clean, "the clean image")
    try:
        _, reports, _ = _register_stack(noisy, clean, register=False, check=True, where="the pair")
    except MisregisteredError as e:
        return False, str(e)
    if len(reports) == 1:
        return True, reports[0].message
    return True, f"the {len(reports)} checked slices are registered (worst correlation {min(r.correlation for r in reports):.3f})"
