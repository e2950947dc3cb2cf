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
    import dask.array as da

    lazy = std if isinstance(std, da.Array) else da.from_array(std, chunks=getattr(std, "chunks", "auto"))
    return lazy.map_blocks(reliability_mask, span, threshold, dtype=np.uint8)


def unreliable_fraction(mask: np.ndarray) -> float:
    return float(np.mean(mask)) if mask.size else 0.0


# ---- the predicted error: what the overlay shows ---------------------------------------------------
# Per pixel, a std from 2 samples, or one level's aleatoric log-variance, is mostly its own noise;
# what it predicts is the error of a neighbourhood. So the map is the root of the *smoothed*
# variance (a Gaussian over the last two axes), scaled by a factor fitted on validation data
# (benchmarks/*_quality.py) and stored in the model card's ``uncertainty.predicted_error``.

# For a model whose card states no calibration (a run of one's own): the aleatoric std where the
# network has that head, else the sample spread, unscaled and smoothed at a typical scale.
UNCALIBRATED = {"weights": {"aleatoric": 1.0}, "smoothing_px": 4.0, "calibrated": False,
                "fallback": {"weights": {"spread": 1.0}, "smoothing_px": 4.0, "calibrated": False}}


def gaussian_smooth(values, sigma_px: float) -> np.ndarray:
    """Gaussian filter of the last two axes (edges mirrored, truncated at 3 sigma), float64."""
    out = np.asarray(values, dtype=np.float64)
    if sigma_px <= 0:
        return out.copy()
    radius = max(1, int(3 * sigma_px + 0.5))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2)
    taps /= taps.sum()
    for axis in (-2, -1):
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        acc = np.zeros_like(out)
        for i, t in enumerate(taps):
            acc += t * np.take(padded, np.arange(i, i + n), axis=axis)
        out = acc
    return out


def calibration_for(card_uncertainty: dict | None) -> dict:
    """The predicted-error calibration a model card states, or :data:`UNCALIBRATED`."""
    return dict((card_uncertainty or {}).get("predicted_error") or UNCALIBRATED)


def predicted_error(std, aleatoric, calibration: dict | None = None) -> np.ndarray | None:
    """The predicted RMS error per pixel, in the output's intensity units (float32, the shape of
    ``std`` / ``aleatoric``; stacks plane by plane).

    ``std`` is the sample spread (``RestoreResult.std``, None with one sample) and ``aleatoric``
    the aleatoric std (``RestoreResult.aleatoric``, None without that head). ``calibration`` (a
    card's ``uncertainty.predicted_error``; default :data:`UNCALIBRATED`) holds ``weights``
    ({"aleatoric": a, "spread": b}: the map is ``sqrt(G * (a^2 ale^2 + b^2 std^2))`` with ``G``
    a Gaussian of ``smoothing_px``) and optionally a ``fallback`` calibration used when a source
    it weighs is missing. None when neither calibration can be applied.
    """
    calibration = UNCALIBRATED if calibration is None else calibration
    sources = {"aleatoric": aleatoric, "spread": std}
    while calibration is not None:
        weights = calibration["weights"]
        if weights and all(sources.get(name) is not None for name in weights):
            var = sum((float(w) * np.asarray(sources[name], dtype=np.float64)) ** 2 for name, w in weights.items())
            return np.sqrt(gaussian_smooth(var, float(calibration.get("smoothing_px", 0.0)))).astype(np.float32)
        calibration = calibration.get("fallback")
    return None


# ---- inputs beyond what the model was validated on -------------------------------------------------
def relative_error(predicted, span: float) -> float:
    """The RMS of a predicted-error map in the model's [-1, 1] units (``2 / span`` times grey
    levels, ``span`` the normaliser's hi - lo): how hard the model finds the input, whatever its
    contrast and data type."""
    predicted = np.asarray(predicted, dtype=np.float64)
    return float(np.sqrt((predicted ** 2).mean()) * 2 / span) if predicted.size else 0.0


def beyond_validation(predicted, span: float, card_uncertainty: dict | None) -> bool | None:
    """True when the input is harder for the model than anything it was validated on: the map's
    :func:`relative_error` above the card's ``uncertainty.validated.limit`` (the hardest
    validation input, e.g. a noisier copy, with a margin). Such a result, e.g. an image of another
    modality, should be treated as unvalidated whatever its map says. None without a limit."""
    limit = ((card_uncertainty or {}).get("validated") or {}).get("limit")
    if limit is None or predicted is None:
        return None
    return relative_error(predicted, span) > float(limit)
