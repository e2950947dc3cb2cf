"""Per-pixel uncertainty: spread of diffusion samples, aleatoric variance, reliability mask."""
from __future__ import annotations

import numpy as np


def sample_std(samples: np.ndarray) -> np.ndarray | None:
    """Per-pixel standard deviation over the first axis (unbiased); None for a single sample."""
    if samples.shape[0] < 2:
        return None
    return samples.std(axis=0, ddof=1).astype(np.float32)


def aleatoric_std(logvars: np.ndarray) -> np.ndarray:
    """Standard deviation from predicted log-variances, pooled over the first axis (samples)."""
    return np.sqrt(np.exp(logvars.astype(np.float64)).mean(axis=0)).astype(np.float32)


def reliability_mask(std: np.ndarray, span: float, threshold: float) -> np.ndarray:
    """1 where the uncertainty is above ``threshold``.

    ``std`` is in image intensity units; ``span`` is the normaliser's intensity span (hi - lo),
    so the threshold is stated in the model's [-1, 1] units and is independent of the image's
    dtype and contrast.
    """
    return (np.asarray(std, dtype=np.float32) * (2.0 / span) > threshold).astype(np.uint8)


def lazy_reliability_mask(std, span: float, threshold: float):
    """:func:`reliability_mask` of a lazy (dask or zarr) std volume, computed chunk by chunk when
    read: a viewer shows a new threshold at once without reading the whole volume."""
    import dask.array as da  # lazily: the widgets import this module at start

    lazy = std if isinstance(std, da.Array) else da.from_array(std, chunks=getattr(std, "chunks", "auto"))
    return lazy.map_blocks(reliability_mask, span, threshold, dtype=np.uint8)


def unreliable_fraction(mask: np.ndarray) -> float:
    return float(np.mean(mask)) if mask.size else 0.0
