"""Is a noisy/clean pair registered, and if not, register it.

A model trained on a misaligned pair learns to blur. The check measures the global offset by
phase correlation (on the whole image) and the local offsets (on a grid of tiles, after removing
the global one); the normalised cross-correlation is reported before and after alignment.

Registration warps the *target* onto the *condition* (one interpolation of the combined global
shift and optical-flow field): the condition keeps its raw noise statistics, which is what the
model will meet at inference, and its geometry is the one the output must follow. EMDiffuse's own
preparation does the same in spirit (global alignment, then RAFT optical flow); here the global
step is phase correlation and the local step scikit-image's optical flow (iLK or TV-L1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.ndimage import shift as nd_shift
from skimage.filters import window
from skimage.registration import optical_flow_ilk, optical_flow_tvl1, phase_cross_correlation

from ..normalize import to_dtype

TOLERANCE_PX = 1.0  # offsets up to a pixel are within the precision EM pairs are prepared to
SMOOTHING = 1.5  # Gaussian sigma (px): shot noise would otherwise dominate the correlation


@dataclass
class Registration:
    """How well ``target`` sits on ``condition``: offsets in pixels (row, col), correlations."""

    shift: tuple[float, float]
    local_shift: float
    correlation: float
    correlation_aligned: float
    tolerance: float = TOLERANCE_PX

    @property
    def registered(self) -> bool:
        return math.hypot(*self.shift) <= self.tolerance and self.local_shift <= self.tolerance

    @property
    def message(self) -> str:
        if self.registered:
            return (f"the pair is registered (offset {math.hypot(*self.shift):.1f} px, "
                    f"local {self.local_shift:.1f} px, correlation {self.correlation:.3f})")
        what = []
        if math.hypot(*self.shift) > self.tolerance:
            what.append(f"the target is offset from the input by ({self.shift[0]:.1f}, {self.shift[1]:.1f}) px (row, col)")
        if self.local_shift > self.tolerance:
            what.append(f"parts of the target are offset by up to {self.local_shift:.1f} px "
                        f"{'more' if what else 'from the input'}")
        what = " and ".join(what)
        return (f"{what}: correlation {self.correlation:.3f}, {self.correlation_aligned:.3f} once aligned; "
                "a model trained on a misregistered pair learns to blur. Register the pair first "
                "(CLI: --register; Training widget: tick 'align misregistered pairs'), or align the images yourself")


def _smooth_standardised(image: np.ndarray) -> np.ndarray:
    a = gaussian_filter(np.asarray(image, dtype=np.float32), SMOOTHING)
    return (a - a.mean()) / max(float(a.std()), 1e-12)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation (Pearson r) of two same-sized images."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / max(math.sqrt((a @ a) * (b @ b)), 1e-12))


def _phase_shift(reference: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """The (row, col) shift that moves ``moving`` onto ``reference``, to 0.1 px."""
    # A Hann window hides the image borders, whose wrap-around jump would otherwise vote for no shift.
    hann = window("hann", reference.shape)
    shift = phase_cross_correlation(reference * hann, moving * hann, upsample_factor=10, normalization=None)[0]
    return np.asarray(shift, dtype=np.float64)


def _overlap(shape: tuple[int, int], shift: np.ndarray, margin: int = 0) -> tuple[slice, slice]:
    """The region of the reference that a shifted image still covers, less ``margin`` pixels."""
    out = []
    for size, s in zip(shape, shift):
        lo, hi = int(math.ceil(max(0.0, s))) + margin, size - int(math.ceil(max(0.0, -s))) - margin
        out.append(slice(lo, max(lo + 1, hi)))
    return tuple(out)


def _check_shapes(condition: np.ndarray, target: np.ndarray) -> None:
    if condition.ndim != 2 or target.ndim != 2:
        raise ValueError(f"registration works on 2D images, got {condition.shape} and {target.shape}")
    if condition.shape != target.shape:
        raise ValueError(f"input {condition.shape} and target {target.shape} differ in size: "
                         "crop them to the same field of view first")


def check_pair(condition: np.ndarray, target: np.ndarray, tolerance: float = TOLERANCE_PX,
               tile: int = 256) -> Registration:
    """Measure how well ``target`` is registered to ``condition`` (2D images of the same size)."""
    condition, target = np.asarray(condition), np.asarray(target)
    _check_shapes(condition, target)
    c, t = _smooth_standardised(condition), _smooth_standardised(target)
    shift = _phase_shift(c, t)
    rows, cols = _overlap(c.shape, shift)
    aligned = nd_shift(t, shift, order=1, mode="nearest")
    # Local offsets on tiles of the globally aligned target; tiles need enough texture to correlate.
    tile = max(64, min(tile, min(c.shape) // 2))
    local = 0.0
    for y in range(0, c.shape[0] - tile + 1, tile):
        for x in range(0, c.shape[1] - tile + 1, tile):
            win = (slice(y, y + tile), slice(x, x + tile))
            local = max(local, float(np.hypot(*_phase_shift(c[win], aligned[win]))))
    return Registration(
        shift=(float(shift[0]), float(shift[1])),
        local_shift=local,
        correlation=correlation(c, t),
        correlation_aligned=correlation(c[rows, cols], aligned[rows, cols]),
        tolerance=tolerance,
    )


@dataclass
class RegisteredPair:
    """The pair cropped to where both are valid, the target warped onto the condition."""

    condition: np.ndarray
    target: np.ndarray
    shift: tuple[float, float]
    max_flow: float
    before: Registration
    after: Registration


def register_pair(condition: np.ndarray, target: np.ndarray, local: bool = True, method: str = "ilk",
                  tolerance: float = TOLERANCE_PX) -> RegisteredPair:
    """Register ``target`` to ``condition``: a global shift by phase correlation, then (``local``)
    a non-rigid optical-flow field (``ilk`` fast, ``tvl1`` more robust to large motions)."""
    condition, target = np.asarray(condition), np.asarray(target)
    _check_shapes(condition, target)
    before = check_pair(condition, target, tolerance)
    c, t = _smooth_standardised(condition), _smooth_standardised(target)
    shift = np.asarray(before.shift)
    grid = np.mgrid[: c.shape[0], : c.shape[1]].astype(np.float32)
    # registered(p) = target(p + flow(p) - shift): the global shift and the flow in one warp.
    coords = grid - shift[:, None, None].astype(np.float32)
    flow = np.zeros_like(grid)
    if local:
        moved = map_coordinates(t, coords, order=1, mode="nearest")
        if method == "ilk":
            flow = optical_flow_ilk(c, moved, radius=15)
        elif method == "tvl1":
            flow = optical_flow_tvl1(c, moved)
        else:
            raise ValueError(f"unknown optical-flow method {method!r}: use ilk or tvl1")
        coords = coords + flow
    warped = map_coordinates(np.asarray(target, dtype=np.float32), coords, order=3, mode="nearest")
    max_flow = float(np.abs(flow).max()) if local else 0.0
    rows, cols = _overlap(c.shape, shift, margin=int(math.ceil(max_flow)))
    cond_out = condition[rows, cols]
    target_out = to_dtype(warped[rows, cols], target.dtype)  # the user's dtype; cubic can overshoot
    return RegisteredPair(cond_out, target_out, (float(shift[0]), float(shift[1])), max_flow,
                          before, check_pair(cond_out, target_out, tolerance))
