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


def _applicable(calibration: dict | None, available: set[str]) -> dict | None:
    """The first of a calibration and its fallbacks whose sources are all available."""
    while calibration is not None:
        weights = calibration["weights"]
        if weights and all(name in available for name in weights):
            return calibration
        calibration = calibration.get("fallback")
    return None


def has_predicted_error(card_uncertainty: dict | None, spread: bool, aleatoric: bool) -> bool:
    """Whether :func:`predicted_error` gives a map when these sources exist."""
    available = {name for name, there in (("spread", spread), ("aleatoric", aleatoric)) if there}
    return _applicable(calibration_for(card_uncertainty), available) is not None


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
    sources = {"aleatoric": aleatoric, "spread": std}
    calibration = _applicable(UNCALIBRATED if calibration is None else calibration,
                              {name for name, value in sources.items() if value is not None})
    if calibration is None:
        return None
    var = sum((float(w) * np.asarray(sources[name], dtype=np.float64)) ** 2 for name, w in calibration["weights"].items())
    return np.sqrt(gaussian_smooth(var, float(calibration.get("smoothing_px", 0.0)))).astype(np.float32)


def mask_field(card_uncertainty: dict | None, spread: bool) -> str:
    """The result field the reliability threshold applies to: the predicted error (``uncertainty``)
    where the card's threshold was fitted on it (``mask_from: predicted_error``), else the sample
    spread (``std``) or the aleatoric std (cards calibrated before the predicted error existed)."""
    if (card_uncertainty or {}).get("mask_from") == "predicted_error":
        return "uncertainty"
    return "std" if spread else "aleatoric"


# ---- inputs beyond what the model was validated on -------------------------------------------------
# Two cheap signs that an input is unlike the model's validation data (e.g. another modality): the
# model finds it harder (the map's relative error above the card's limit), or what a denoiser
# removed does not look like the noise it was validated on (lag-1 correlations of input - output,
# compared with the card's; only for tasks whose output is on the input's grid).
CORRELATION_TOLERANCE = 0.1


def relative_error(predicted, span: float) -> float:
    """The RMS of a predicted-error map in the model's [-1, 1] units (``2 / span`` times grey
    levels, ``span`` the normaliser's hi - lo): how hard the model finds the input, whatever its
    contrast and data type."""
    predicted = np.asarray(predicted, dtype=np.float64)
    return float(np.sqrt((predicted ** 2).mean()) * 2 / span) if predicted.size else 0.0


def residual_correlation(image, restored) -> list[float]:
    """Lag-1 autocorrelation along y and x of what restoring removed (``image - restored``, each
    plane centred): the spatial character of the noise a denoiser saw in its input."""
    resid = np.asarray(image, dtype=np.float64) - np.asarray(restored, dtype=np.float64)
    resid = resid.reshape(-1, *resid.shape[-2:])
    resid = resid - resid.mean(axis=(-2, -1), keepdims=True)
    var = float((resid ** 2).mean())
    if var <= 0:
        return [0.0, 0.0]
    return [float((resid[:, 1:] * resid[:, :-1]).mean() / var), float((resid[..., 1:] * resid[..., :-1]).mean() / var)]


def correlation_gap(got, validated: list) -> float:
    """The largest per-axis difference between residual correlations ``got`` and the nearest
    validated ones: one validated pair, or the segment between two (the as-acquired input and its
    noisier copy: an input with some of each kind of noise lies between them)."""
    got = np.asarray(got, dtype=np.float64)
    ends = [np.asarray(v, dtype=np.float64) for v in validated]
    if len(ends) == 1:
        return float(np.abs(got - ends[0]).max())
    t = np.linspace(0.0, 1.0, 101)[:, None]
    return float(np.abs(got - (ends[0] + t * (ends[1] - ends[0]))).max(axis=1).min())


def removed_fraction(image, restored, span: float) -> float:
    """The RMS of what restoring removed (``image - restored``) in the model's [-1, 1] units: a
    denoiser that takes away far more than it did on any validation input is either facing much
    more noise or taking away structure."""
    resid = np.asarray(image, dtype=np.float64) - np.asarray(restored, dtype=np.float64)
    return float(np.sqrt((resid ** 2).mean()) * 2 / span) if resid.size else 0.0


def validation_check(predicted, span: float, card_uncertainty: dict | None, image=None, restored=None) -> dict | None:
    """Whether an input lies beyond what the model was validated on (the card's
    ``uncertainty.validated``): ``beyond`` is True when the map's :func:`relative_error` exceeds
    ``limit`` (the hardest validation input, e.g. a noisier copy, with a margin) or, given the
    input and the restored image on the same grid, when :func:`residual_correlation` differs from
    the card's ``residual_correlation`` (or, with ``residual_correlation_noisier``, from every
    mixture of the two: :func:`correlation_gap`) by more than its ``tolerance`` or :func:`removed_fraction`
    exceeds ``removed_limit``; ``why`` says which. Such a
    result, e.g. an image of another modality, is unvalidated whatever its map says. None when
    the card states no limit."""
    validated = (card_uncertainty or {}).get("validated") or {}
    if "limit" not in validated or predicted is None:
        return None
    out = {"relative_error": round(relative_error(predicted, span), 4), "why": []}
    if out["relative_error"] > float(validated["limit"]):
        out["why"].append(f"predicted error {out['relative_error']:.3f} of the intensity span, above the "
                          f"validated {float(validated['limit']):.3f}")
    references = [validated[k] for k in ("residual_correlation", "residual_correlation_noisier") if validated.get(k)]
    if validated.get("residual_correlation") and image is not None and restored is not None:
        got = residual_correlation(image, restored)
        out["residual_correlation"] = [round(v, 3) for v in got]
        tolerance = float(validated.get("tolerance", CORRELATION_TOLERANCE))
        if correlation_gap(got, references) > tolerance:
            seen = " to ".join(f"y {r[0]:.2f}, x {r[1]:.2f}" for r in references)
            out["why"].append(f"the removed noise's correlation (y {got[0]:.2f}, x {got[1]:.2f}) is unlike "
                              f"the validation data's ({seen})")
    removed_limit = validated.get("removed_limit")
    if removed_limit is not None and image is not None and restored is not None:
        out["removed"] = round(removed_fraction(image, restored, span), 4)
        if out["removed"] > float(removed_limit):
            out["why"].append(f"what it removed is {out['removed'] / 2:.1%} of the intensity span (RMS), more than from any "
                              f"validation input ({float(removed_limit) / 2:.1%} with the margin): a much noisier "
                              f"input, or structure taken away")
    out["beyond"] = bool(out["why"])
    return out
