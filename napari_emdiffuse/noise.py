"""Noise seeded by global position.

Every sample's noise comes in fixed blocks of the global image grid, each block seeded by
(seed, stream..., block index), so any window of the image draws exactly the same numbers
whatever the tiling, chunking, order or worker that asks for it.
"""
from __future__ import annotations

import numpy as np

BLOCK = 64


def positional_noise(origin: tuple[int, ...], shape: tuple[int, ...], seed: int,
                     stream: tuple[int, ...] = ()) -> np.ndarray:
    """Standard normal float32 noise for the window ``origin : origin + shape`` of the global grid."""
    out = np.empty(shape, dtype=np.float32)
    lo = [o // BLOCK for o in origin]
    hi = [(o + s - 1) // BLOCK for o, s in zip(origin, shape)]
    for block in np.ndindex(*[h - l + 1 for l, h in zip(lo, hi)]):
        idx = [l + b for l, b in zip(lo, block)]
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, *stream, *idx])))
        values = rng.standard_normal((BLOCK,) * len(shape), dtype=np.float32)
        dst, src = [], []
        for i, o, s in zip(idx, origin, shape):
            a, b = max(i * BLOCK, o), min((i + 1) * BLOCK, o + s)
            dst.append(slice(a - o, b - o))
            src.append(slice(a - i * BLOCK, b - i * BLOCK))
        out[tuple(dst)] = values[tuple(src)]
    return out
