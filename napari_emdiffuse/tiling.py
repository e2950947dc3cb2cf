"""Tiled evaluation of a denoiser over an image of any size.

The sampler runs on the whole image; only the network is evaluated tile by tile. At every noise
level the tiles' estimates are blended with a smooth window into one image, so neighbouring tiles
agree at every step (as in MultiDiffusion) and no seam appears, unlike stitching finished tiles.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


class Cancelled(Exception):
    """Raised when a cancel request stops a restoration; ``partial`` holds what finished."""

    def __init__(self, message: str = "cancelled", partial=None):
        super().__init__(message)
        self.partial = partial


def tile_starts(length: int, tile: int, overlap: int, offset: int = 0) -> list[int]:
    """Tile starts covering ``length`` pixels that begin at global position ``offset``, with at
    least ``overlap`` between neighbours: the tiles of the global lattice (one every
    ``tile - overlap`` pixels from 0) that fit, plus one flush with each end the lattice leaves
    uncovered. Windows of one image (streamed chunks) so share their interior tiles; for a whole
    image it costs as many tiles as the fewest that cover it."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    first = -(-offset // stride) * stride - offset  # the first lattice point inside the window
    starts = list(range(first, length - tile + 1, stride))
    if not starts or starts[0] > 0:
        starts.insert(0, 0)
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def taper(length: int, overlap: int) -> np.ndarray:
    """1D blending weights: a raised-cosine ramp over ``overlap`` pixels at both ends, never zero."""
    w = np.ones(length, dtype=np.float32)
    ramp = min(overlap, length // 2)
    if ramp > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        w[:ramp], w[length - ramp:] = r, r[::-1]
    return np.maximum(w, 1e-3)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass
class TileGrid:
    """Tile positions over an (H, W) image; ``tile`` per axis is a multiple of the network's
    downsampling factor. Images smaller than a tile are padded (reflect) by the caller.
    ``origin`` is the image's global position: tiles sit on the global lattice (see tile_starts)."""

    shape: tuple[int, int]
    tile: tuple[int, int]
    overlap: int
    origin: tuple[int, int] = (0, 0)

    @classmethod
    def plan(cls, shape: tuple[int, int], tile: int, overlap: int, multiple: int,
             origin: tuple[int, int] = (0, 0)) -> "TileGrid":
        tile_hw = tuple(min(round_up(tile, multiple), round_up(s, multiple)) for s in shape)
        overlap = min(overlap, min(tile_hw) // 2)
        return cls(tuple(shape), tile_hw, overlap, tuple(origin))

    @property
    def padded_shape(self) -> tuple[int, int]:
        return tuple(max(s, t) for s, t in zip(self.shape, self.tile))

    def windows(self) -> list[tuple[slice, slice]]:
        ys = tile_starts(self.padded_shape[0], self.tile[0], self.overlap, self.origin[0])
        xs = tile_starts(self.padded_shape[1], self.tile[1], self.overlap, self.origin[1])
        return [(slice(y, y + self.tile[0]), slice(x, x + self.tile[1])) for y in ys for x in xs]

    def weights(self) -> np.ndarray:
        return np.outer(taper(self.tile[0], self.overlap), taper(self.tile[1], self.overlap))

    @property
    def evaluated_fraction(self) -> float:
        """Pixels the network evaluates per output pixel."""
        return len(self.windows()) * self.tile[0] * self.tile[1] / (self.shape[0] * self.shape[1])


class TiledDenoiser:
    """``denoise(x, sigma) -> x0`` for a whole (B, 1, H, W) state, evaluated in batched tiles.

    ``condition`` is (B or 1, C, H, W) on the device; ``slice_index`` (B,) or None. Batches mix
    tiles of all B states. The log-variance of an aleatoric network from the first call (the
    noisiest level, where it estimates the spread of x0 given the condition) is kept in
    ``first_logvar``. ``on_batch(n_tiles)`` is called after each network batch; ``cancel()``
    is polled before each.
    """

    def __init__(self, denoiser, condition: torch.Tensor, grid: TileGrid, batch_size: int,
                 slice_index: torch.Tensor | None = None, autocast=None,
                 on_batch: Callable[[int], None] | None = None, cancel: Callable[[], bool] | None = None):
        self.denoiser, self.condition, self.grid = denoiser, condition, grid
        self.slice_index, self.batch_size = slice_index, max(1, int(batch_size))
        self.autocast = autocast
        self.on_batch, self.cancel = on_batch, cancel
        self.windows = grid.windows()
        w = torch.from_numpy(grid.weights()).to(condition.device)
        self.weight = w
        norm = torch.zeros(grid.padded_shape, device=condition.device)
        for win in self.windows:
            norm[win] += w
        self.norm = norm
        self.first_logvar: torch.Tensor | None = None
        self.first_x0: torch.Tensor | None = None  # at the noisiest level: E[x0 | condition]
        self.calls = 0

    @property
    def tiles_per_call(self) -> int:
        return len(self.windows)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        b = x.shape[0]
        want_logvar = self.first_logvar is None and self.denoiser.aleatoric
        out = torch.zeros_like(x)
        logvar = torch.zeros_like(x[:, :1]) if want_logvar else None
        jobs = [(i, win) for i in range(b) for win in self.windows]
        for start in range(0, len(jobs), self.batch_size):
            if self.cancel is not None and self.cancel():
                raise Cancelled()
            chunk = jobs[start:start + self.batch_size]
            xs = torch.stack([x[i, :, win[0], win[1]] for i, win in chunk])
            cs = torch.stack([self.condition[i if len(self.condition) > 1 else 0, :, win[0], win[1]] for i, win in chunk])
            si = None if self.slice_index is None else self.slice_index[[i for i, _ in chunk]]
            with torch.inference_mode(), (self.autocast() if self.autocast else contextlib.nullcontext()):
                x0, lv = self.denoiser.with_logvar(xs, torch.as_tensor(sigma).float(), cs, si)
            for (i, win), est in zip(chunk, x0.float()):
                out[i, :, win[0], win[1]] += est * self.weight
            if want_logvar and lv is not None:
                for (i, win), est in zip(chunk, lv.float()):
                    logvar[i, :, win[0], win[1]] += est * self.weight
            if self.on_batch is not None:
                self.on_batch(len(chunk))
        if want_logvar:
            self.first_logvar = logvar / self.norm
        out = out / self.norm
        if self.calls == 0:
            self.first_x0 = out
        self.calls += 1
        return out

