"""Training examples: random patches of aligned (condition, target) images.

The validation split is by region: a band of rows is held out and training crops never reach it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch


def augment(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip / 90-degree rotation for every array (last two axes)."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(-2, -1))
        out.append(np.ascontiguousarray(a[..., ::-1] if flip else a))
    return out


def split_rows(height: int, val_fraction: float, gap: int = 0) -> tuple[slice, slice]:
    """Train rows and held-out rows (the bottom band), separated by ``gap`` rows."""
    n_val = max(1, int(round(height * val_fraction)))
    return slice(0, height - n_val - gap), slice(height - n_val, height)


@dataclass
class PatchPairs:
    """Aligned condition/target stacks (N, C, H, W) / (N, 1, H, W), already normalised to [-1, 1].

    ``extra_noise`` adds Gaussian noise of a random std in [0, extra_noise] to the condition of
    half the patches, so the model also holds up on inputs noisier than its training pairs.
    ``intensity_jitter`` scales and shifts the condition by up to that fraction, since a noisier
    or differently exposed image normalises to a slightly different contrast.
    """

    condition: np.ndarray
    target: np.ndarray
    patch: int = 128
    extra_noise: float = 0.0
    intensity_jitter: float = 0.0
    slice_index: np.ndarray | None = None

    def __post_init__(self):
        if self.condition.ndim != 4 or self.target.ndim != 4:
            raise ValueError("condition and target must be (N, C, H, W)")
        if self.condition.shape[-2:] != self.target.shape[-2:] or len(self.condition) != len(self.target):
            raise ValueError("condition and target must have the same number of images and the same size")
        h, w = self.condition.shape[-2:]
        if min(h, w) < self.patch:
            self.patch = int(min(h, w)) // 8 * 8
            if self.patch < 16:
                raise ValueError(f"training images of {h}x{w} pixels are too small: at least 16x16 needed")

    def draw(self, batch: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        n, _, h, w = self.condition.shape
        conds, targets, idx = [], [], []
        for _ in range(batch):
            i = int(rng.integers(n))
            y, x = int(rng.integers(h - self.patch + 1)), int(rng.integers(w - self.patch + 1))
            win = (slice(y, y + self.patch), slice(x, x + self.patch))
            c, t = augment([self.condition[i][(slice(None), *win)], self.target[i][(slice(None), *win)]], rng)
            if self.extra_noise > 0 and rng.random() < 0.5:
                c = c + rng.normal(0, rng.uniform(0, self.extra_noise), c.shape).astype(np.float32)
            if self.intensity_jitter > 0:
                j = self.intensity_jitter
                c = (c * rng.uniform(1 - j, 1 + j) + rng.uniform(-j, j)).astype(np.float32)
            conds.append(c)
            targets.append(t)
            if self.slice_index is not None:
                idx.append(self.slice_index[i])
        out = {"condition": torch.from_numpy(np.stack(conds)).float(), "target": torch.from_numpy(np.stack(targets)).float()}
        if self.slice_index is not None:
            out["slice_index"] = torch.tensor(idx, dtype=torch.float32)
        return out

    def fixed_batch(self, batch: int, seed: int = 1234) -> dict[str, torch.Tensor]:
        """A reproducible batch (validation)."""
        with _plain([self]):
            return self.draw(batch, np.random.default_rng(seed))


@contextlib.contextmanager
def _plain(parts: list[PatchPairs]):
    """Draw without the extra noise and intensity jitter (validation sees the data as it is)."""
    saved = [(p.extra_noise, p.intensity_jitter) for p in parts]
    for p in parts:
        p.extra_noise = p.intensity_jitter = 0.0
    try:
        yield
    finally:
        for p, (noise, jitter) in zip(parts, saved):
            p.extra_noise, p.intensity_jitter = noise, jitter


class PatchSet:
    """Several :class:`PatchPairs` (images of different sizes) drawn as one, each image in
    proportion to its area; all give patches of the same (the smallest) size."""

    def __init__(self, parts: list[PatchPairs]):
        if not parts:
            raise ValueError("no training images: give at least one")
        self.parts = list(parts)
        self.patch = min(p.patch for p in self.parts)
        for p in self.parts:
            p.patch = self.patch
        area = np.array([p.condition.shape[0] * p.condition.shape[-2] * p.condition.shape[-1] for p in self.parts],
                        dtype=np.float64)
        self.weights = area / area.sum()

    def draw(self, batch: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        picks = rng.choice(len(self.parts), size=batch, p=self.weights)
        drawn = [self.parts[i].draw(1, rng) for i in picks]
        return {key: torch.cat([d[key] for d in drawn]) for key in drawn[0]}

    def fixed_batch(self, batch: int, seed: int = 1234) -> dict[str, torch.Tensor]:
        with _plain(self.parts):
            return self.draw(batch, np.random.default_rng(seed))


def patch_set(parts: list[PatchPairs]) -> PatchPairs | PatchSet:
    """One part as itself (its draws unchanged), several as a :class:`PatchSet`."""
    return parts[0] if len(parts) == 1 else PatchSet(parts)
