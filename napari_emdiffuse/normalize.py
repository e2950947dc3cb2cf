"""Robust intensity normalisation to the model's [-1, 1] range and back."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Normalizer:
    """Maps the ``low``/``high`` percentiles of an image to -1/+1 (and back)."""

    lo: float
    hi: float

    @classmethod
    def fit(cls, image, low: float = 0.1, high: float = 99.9, max_samples: int = 2_000_000,
            bin: int = 1) -> "Normalizer":
        """``bin > 1`` takes the percentiles of bin x bin block means, which hardly move with the
        noise level, so a faster (noisier) scan normalises to the same contrast."""
        image = np.asarray(image)
        if bin > 1 and image.ndim >= 2 and min(image.shape[-2:]) >= bin:
            h, w = (s // bin * bin for s in image.shape[-2:])
            blocks = image[..., :h, :w].astype(np.float32).reshape(*image.shape[:-2], h // bin, bin, w // bin, bin)
            image = blocks.mean(axis=(-3, -1))
        flat = image.reshape(-1)
        if flat.size > max_samples:  # percentiles of a strided subsample are plenty
            flat = flat[:: flat.size // max_samples + 1]
        lo, hi = np.percentile(flat.astype(np.float64), [low, high])
        if not np.isfinite(lo) or not np.isfinite(hi):
            raise ValueError("the image contains NaN or infinite values: clean or mask them first")
        if hi - lo <= 1e-12:
            lo, hi = float(np.min(flat)), float(np.max(flat))
        if hi - lo <= 1e-12:
            raise ValueError("the image is constant: there is nothing to restore")
        return cls(float(lo), float(hi))

    @classmethod
    def for_card(cls, image, normalization: dict) -> "Normalizer":
        """Fit with a model card's ``normalization`` section (low, high, bin)."""
        return cls.fit(image, normalization["low"], normalization["high"], bin=int(normalization.get("bin", 1)))

    def __call__(self, image) -> np.ndarray:
        return ((np.asarray(image, dtype=np.float32) - self.lo) / (self.hi - self.lo) * 2 - 1).astype(np.float32)

    def inverse(self, image) -> np.ndarray:
        return (np.asarray(image, dtype=np.float32) + 1) / 2 * (self.hi - self.lo) + self.lo


def to_dtype(image: np.ndarray, dtype) -> np.ndarray:
    """Cast float data to ``dtype``, rounding and clipping to its range for integer types."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(image), info.min, info.max).astype(dtype)
    return np.asarray(image).astype(dtype)
