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

    def draw(self, batch: int, rng: np.random.Generator, rows: slice | None = None) -> dict[str, torch.Tensor]:
        """``batch`` random patches, or only ``rows`` of them: ``rng`` moves on as for all ``batch``
        (each data-parallel process crops its own rows of one global draw)."""
        n, channels, h, w = self.condition.shape
        p = self.patch
        kept = range(batch)[rows] if rows is not None else range(batch)
        conds, targets, idx = [], [], []
        for k in range(batch):
            keep = k in kept
            i = int(rng.integers(n))
            y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
            win = (slice(None), slice(y, y + p), slice(x, x + p))
            pair = augment([self.condition[i][win], self.target[i][win]] if keep else [], rng)
            if self.extra_noise > 0 and rng.random() < 0.5:
                noise = rng.normal(0, rng.uniform(0, self.extra_noise), (channels, p, p)).astype(np.float32)
                if keep:
                    pair[0] = pair[0] + noise
            if self.intensity_jitter > 0:
                j = self.intensity_jitter
                scale, shift = rng.uniform(1 - j, 1 + j), rng.uniform(-j, j)
                if keep:
                    pair[0] = (pair[0] * scale + shift).astype(np.float32)
            if keep:
                conds.append(pair[0])
                targets.append(pair[1])
                if self.slice_index is not None:
                    idx.append(self.slice_index[i])
        out = {"condition": _stacked(conds, (channels, p, p)), "target": _stacked(targets, (self.target.shape[1], p, p))}
        if self.slice_index is not None:
            out["slice_index"] = torch.tensor(idx, dtype=torch.float32)
        return out

    def fixed_batch(self, batch: int, seed: int = 1234) -> dict[str, torch.Tensor]:
        """A reproducible batch (validation)."""
        with _plain([self]):
            return self.draw(batch, np.random.default_rng(seed))


def _stacked(arrays: list[np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
    """(N, *shape) float32, also for N = 0 (a process given no rows)."""
    return torch.from_numpy(np.stack(arrays) if arrays else np.zeros((0, *shape), np.float32)).float()


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

    def draw(self, batch: int, rng: np.random.Generator, rows: slice | None = None) -> dict[str, torch.Tensor]:
        """As :meth:`PatchPairs.draw`."""
        picks = rng.choice(len(self.parts), size=batch, p=self.weights)
        kept = range(batch)[rows] if rows is not None else range(batch)
        drawn = [self.parts[i].draw(1, rng, None if k in kept else slice(0)) for k, i in enumerate(picks)]
        return {key: torch.cat([d[key] for d in drawn]) for key in drawn[0]}

    def fixed_batch(self, batch: int, seed: int = 1234) -> dict[str, torch.Tensor]:
        with _plain(self.parts):
            return self.draw(batch, np.random.default_rng(seed))


def patch_set(parts: list[PatchPairs]) -> PatchPairs | PatchSet:
    """One part as itself (its draws unchanged), several as a :class:`PatchSet`."""
    return parts[0] if len(parts) == 1 else PatchSet(parts)
