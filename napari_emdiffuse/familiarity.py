"""How familiar an input looks to the network: the UNet's middle-block activations on crops of the
input, compared with those on the data the model was trained on.

A screen for inputs the model was never meant for, in its own terms. An image of another modality
whose noise was made to look like the training data's passes the cheap checks on what a denoiser
removed (:func:`napari_emdiffuse.uncertainty.validation_check`), but the network's deepest
features still see different structure. The card stores the training data's feature mean and
std (``uncertainty.validated.features``) and a limit from validation inputs; each crop's
features become a z-score, its RMS over channels a distance, and an input's distance is the
median over its crops. It costs one network evaluation over at most :data:`MAX_CROPS` crops,
spread over up to :data:`SCREENED_PLANES` planes of a stack; an input with fewer than
:data:`MIN_CROPS` crops is too small to judge (one crop's distance varies too much).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

CROP = 96  # px; the demo pair's validation band is 96 rows high
MAX_CROPS = 16  # evenly spaced over a larger input: the screen stays a fraction of a restore
MIN_CROPS = 4
SCREENED_PLANES = 4
SEED = 0


def crop_windows(shape: tuple[int, int], multiple: int, crop: int = CROP, limit: int | None = MAX_CROPS) -> list[tuple[int, int, int, int]]:
    """Non-overlapping (y, x, h, w) crops of a plane, ``crop`` px or the plane's size rounded down
    to the network's ``multiple``; at most ``limit`` of them, evenly spaced."""
    h = min(crop, shape[0] // multiple * multiple)
    w = min(crop, shape[1] // multiple * multiple)
    if h == 0 or w == 0:
        return []
    windows = [(y, x, h, w) for y in range(0, shape[0] - h + 1, h) for x in range(0, shape[1] - w + 1, w)]
    if limit is not None and len(windows) > limit:
        windows = [windows[int(i)] for i in np.linspace(0, len(windows) - 1, limit).round()]
    return windows


def middle_features(model, plane: np.ndarray, windows) -> np.ndarray:
    """(crops, channels): the middle block's channel means on each crop of a normalised plane,
    the network seeing the crop as its condition at the noisiest level (as the posterior mean
    does), with noise drawn from a fixed seed."""
    network = model.network
    device = next(network.parameters()).device
    captured: list[torch.Tensor] = []
    hook = network.middle_block.register_forward_hook(
        lambda module, args, out: captured.append(out.float().mean(dim=(-2, -1))))
    try:
        crops = np.stack([plane[y:y + h, x:x + w] for y, x, h, w in windows])[:, None]
        condition = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32)).to(device)
        generator = torch.Generator().manual_seed(SEED)
        sigma = float(model.diffusion["sigma_max"])
        x = (torch.randn(condition.shape, generator=generator) * sigma).to(device)
        with torch.no_grad():
            model.denoiser().with_logvar(x, sigma, condition)
    finally:
        hook.remove()
    return torch.cat(captured).cpu().numpy().astype(np.float64)


def reference(model, plane: np.ndarray, crops: int = 80, seed: int = 0) -> dict:
    """The feature mean and std over ``crops`` random :data:`CROP` x :data:`CROP` crops of a
    normalised plane of training data (what the card stores)."""
    rng = np.random.default_rng(seed)
    windows = [(int(rng.integers(0, plane.shape[0] - CROP + 1)), int(rng.integers(0, plane.shape[1] - CROP + 1)), CROP, CROP)
               for _ in range(crops)]
    feats = middle_features(model, plane, windows)
    return {"mean": [round(float(v), 4) for v in feats.mean(axis=0)],
            "std": [round(float(v), 4) for v in feats.std(axis=0) + 1e-4]}


def distance(model, planes: Sequence[np.ndarray], features: dict) -> float | None:
    """The median over crops of normalised planes (at most :data:`MAX_CROPS` in all) of the RMS
    z-score of their features against the card's ``features`` (mean, std); None when the planes
    hold fewer than :data:`MIN_CROPS` crops."""
    multiple = int(model.network.downsample_factor)
    per_plane = max(1, MAX_CROPS // len(planes))
    feats = [middle_features(model, np.asarray(p), w) for p in planes
             if (w := crop_windows(tuple(np.shape(p)[-2:]), multiple, limit=per_plane))]
    if sum(len(f) for f in feats) < MIN_CROPS:
        return None
    z = (np.concatenate(feats) - np.asarray(features["mean"])) / np.asarray(features["std"])
    return float(np.median(np.sqrt((z ** 2).mean(axis=1))))


def input_distance(model, plane_at: Callable[[int], np.ndarray], depth: int, features: dict) -> float | None:
    """:func:`distance` of an input of ``depth`` planes (1 for an image), ``plane_at(z)`` giving
    the normalised plane z: up to :data:`SCREENED_PLANES` evenly spaced planes are screened."""
    picks = np.unique(np.linspace(0, depth - 1, min(depth, SCREENED_PLANES)).round().astype(int))
    return distance(model, [plane_at(int(z)) for z in picks], features)
