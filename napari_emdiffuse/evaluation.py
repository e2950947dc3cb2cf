"""The evaluation protocol: one PSNR (and SSIM) definition, the regions every preset is trained,
validated and tested on, margins with bootstrap intervals, and the scores an uncertainty map is
judged by (block-error ranking, sparsification, calibration by decile). numpy and scipy only.

PSNR, everywhere in this project: the image is first matched to the reference by a least-squares
affine intensity fit over the scored region (``a * image + b``: two acquisitions of one field
differ in brightness and contrast), then ``10 log10(peak^2 / MSE)`` with ``peak`` the full range
of the reference's data type (255 for the 8-bit data here). SSIM uses the same match and peak,
slice by slice for stacks.

Regions (:data:`SPLITS`) are disjoint: models are trained on ``train``; model selection, early
stopping, baseline parameters and uncertainty calibration use ``val`` only; ``test`` is scored
once, for the reported figures. A margin over a baseline is reported with a 95% interval from a
bootstrap over blocks of the test region; a margin whose interval holds 0 is a tie.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import convolve1d, gaussian_filter
from scipy.optimize import nnls
from scipy.stats import rankdata, spearmanr
from skimage.metrics import structural_similarity

from .uncertainty import gaussian_smooth, predicted_error

BLOCK = 16  # uncertainty is judged on 16 x 16 blocks: per pixel, the reference's own noise dominates
CI_BLOCK = 32  # bootstrap unit for intervals: larger than the error's spatial correlation
PEAK_UINT8 = 255.0

# Where each preset's data is split. Paths are relative to the repository root; rows/slices as
# Python ranges [start, stop). Only scripts read these files; the package never does at run time.
SPLITS: dict[str, dict] = {
    "demo-denoise": {
        "data": ("napari_emdiffuse/sample_data/pair53_noisy_dwell4us.tif",
                 "napari_emdiffuse/sample_data/pair53_clean_dwell36us.tif"),
        "note": "one real 768 x 768 pair is all there is: split into row bands 16 px apart",
        "train": {"rows": (288, 768)},
        "val": {"rows": (176, 272)},
        "test": {"rows": (0, 160)},
    },
    "superres-sstem": {
        "train": {"files": ("napari_emdiffuse/sample_data/sstem_isbi2012_crop.tif",
                            "weights/data/sstem_isbi2012_train_tiles.tif"),
                  "note": "rows 128-511 of every ISBI 2012 section"},
        "val": {"files": ("weights/data/sstem_isbi2012_val.tif",),
                "note": "sections 0, 3, ..., 27, rows 0-127"},
        "test": {"files": ("weights/data/sstem_isbi2012_test.tif",),
                 "note": "sections 1, 4, ..., 28, rows 0-127: in no training or validation file"},
    },
    "isotropic-fibsem": {
        "train": {"files": ("weights/data/fibsem_flyem_train.tif", "weights/data/fibsem_flyem_train2.tif"),
                  "note": "slices 0-89 and 160-249, rows and columns 0-143 of the FlyEM cube"},
        "val": {"files": ("napari_emdiffuse/sample_data/fibsem_flyem_crop.tif",),
                "note": "slices 93-156, rows and columns 61-188"},
        "test": {"files": ("weights/data/fibsem_flyem_test.tif",),
                 "note": "slices 93-156, rows 189-249, all columns: in no training or validation file"},
    },
}


def rows_of(preset: str, part: str) -> slice:
    """The row band of a preset split by rows (the demo pair)."""
    start, stop = SPLITS[preset][part]["rows"]
    return slice(start, stop)


# ---- image quality -------------------------------------------------------------------------------
def peak_of(reference) -> float:
    """The full range of the reference's data type; for float data its own range."""
    dtype = np.asarray(reference).dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.max - info.min)
    reference = np.asarray(reference, dtype=np.float64)
    return float(reference.max() - reference.min())


def affine_match(image, reference) -> np.ndarray:
    """``a * image + b`` with a, b the least-squares fit to ``reference`` (float64)."""
    x = np.asarray(image, dtype=np.float64)
    design = np.stack([x.ravel(), np.ones(x.size)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, np.asarray(reference, dtype=np.float64).ravel(), rcond=None)
    return a * x + b


def squared_error(image, reference) -> np.ndarray:
    """Per-pixel squared error after the affine match (float64, the reference's shape)."""
    return (affine_match(image, reference) - np.asarray(reference, dtype=np.float64)) ** 2


def psnr(image, reference, peak: float | None = None) -> float:
    """The project's PSNR (module docstring), in dB."""
    peak = peak_of(reference) if peak is None else peak
    mse = float(squared_error(image, reference).mean())
    return float(10 * np.log10(peak ** 2 / max(mse, 1e-12)))


def ssim(image, reference, peak: float | None = None) -> float:
    """Mean SSIM after the affine match; stacks slice by slice."""
    peak = peak_of(reference) if peak is None else peak
    matched, reference = affine_match(image, reference), np.asarray(reference, dtype=np.float64)
    if matched.ndim == 2:
        return float(structural_similarity(matched, reference, data_range=peak))
    return float(np.mean([structural_similarity(a, b, data_range=peak) for a, b in zip(matched, reference)]))


def scores(image, reference, peak: float | None = None) -> dict:
    return {"psnr": round(psnr(image, reference, peak), 3), "ssim": round(ssim(image, reference, peak), 4)}


# ---- blocks --------------------------------------------------------------------------------------
def blocks(values, block: int = BLOCK) -> np.ndarray:
    """(n_blocks, block * block) of the last two axes (stacks: every slice's blocks); edges that
    do not fill a block are dropped."""
    a = np.asarray(values, dtype=np.float64)
    a = a.reshape(-1, *a.shape[-2:])
    n, h, w = a.shape
    h, w = h // block * block, w // block * block
    tiles = a[:, :h, :w].reshape(n, h // block, block, w // block, block).swapaxes(2, 3)
    return tiles.reshape(-1, block * block)


def block_rms(values, block: int = BLOCK) -> np.ndarray:
    """Root mean square of ``values`` per block (e.g. of a per-pixel error or predicted error)."""
    return np.sqrt((blocks(values, block) ** 2).mean(axis=1))


def block_rmse(image, reference, block: int = BLOCK) -> np.ndarray:
    """RMSE per block after the affine match over the whole region."""
    return np.sqrt(blocks(squared_error(image, reference), block).mean(axis=1))


def gradient_proxy(image, block: int = BLOCK) -> np.ndarray:
    """The trivial uncertainty an error map must beat: the mean gradient magnitude per block."""
    a = np.asarray(image, dtype=np.float64)
    a = a.reshape(-1, *a.shape[-2:])
    grad = np.stack([np.hypot(*np.gradient(plane)) for plane in a])
    return blocks(grad, block).mean(axis=1)


# ---- margins with intervals ------------------------------------------------------------------------
def psnr_margin(image, baseline, reference, block: int = CI_BLOCK, n_boot: int = 2000, seed: int = 0,
                peak: float | None = None) -> dict:
    """PSNR(image) - PSNR(baseline) in dB with a 95% bootstrap interval over blocks of the region
    (each affine match fitted once, on the whole region). ``beats`` is True when the interval
    lies above 0, ``tie`` when it holds 0."""
    peak = peak_of(reference) if peak is None else peak
    err_a = blocks(squared_error(image, reference), block).sum(axis=1)
    err_b = blocks(squared_error(baseline, reference), block).sum(axis=1)
    margin = float(10 * np.log10(err_b.sum() / err_a.sum()))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(err_a), size=(n_boot, len(err_a)))
    boot = 10 * np.log10(err_b[picks].sum(axis=1) / err_a[picks].sum(axis=1))
    lo, hi = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    del peak  # the margin is a ratio of errors: the peak cancels
    return {"margin_db": round(margin, 3), "ci95": [round(lo, 3), round(hi, 3)],
            "beats": lo > 0, "tie": lo <= 0 <= hi, "blocks": int(len(err_a)), "block": block}


# ---- judging an uncertainty map -----------------------------------------------------------------------
def spearman(a, b) -> float:
    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


def spearman_gap(pred_a, err_a, pred_b, err_b, n_boot: int = 2000, seed: int = 0) -> dict:
    """Spearman(pred_a, err_a) - Spearman(pred_b, err_b) over the same blocks, with a 95% bootstrap
    interval (blocks resampled together for both)."""
    arrays = [np.asarray(a, dtype=np.float64) for a in (pred_a, err_a, pred_b, err_b)]
    n = len(arrays[0])
    picks = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))

    def rho(p, e):  # Spearman of each resample: Pearson of the ranks (ties averaged)
        rp, re = rankdata(p, axis=-1), rankdata(e, axis=-1)
        rp, re = rp - rp.mean(-1, keepdims=True), re - re.mean(-1, keepdims=True)
        return (rp * re).sum(-1) / np.sqrt((rp ** 2).sum(-1) * (re ** 2).sum(-1))

    boot = rho(arrays[0][picks], arrays[1][picks]) - rho(arrays[2][picks], arrays[3][picks])
    lo, hi = np.percentile(boot, [2.5, 97.5])
    gap = spearman(arrays[0], arrays[1]) - spearman(arrays[2], arrays[3])
    return {"gap": round(float(gap), 3), "ci95": [round(float(lo), 3), round(float(hi), 3)]}


def sparsification(predicted, error, steps: int = 20) -> np.ndarray:
    """RMSE of the blocks left after removing the fraction 0, 1/steps, ... of them with the
    highest ``predicted`` value (normalised by the RMSE of all blocks)."""
    error = np.asarray(error, dtype=np.float64)
    order = np.argsort(-np.asarray(predicted, dtype=np.float64), kind="stable")
    sq = error[order] ** 2
    n = len(sq)
    kept = [sq[int(round(f * n)):] for f in np.arange(steps) / steps]
    return np.array([np.sqrt(k.mean()) for k in kept]) / np.sqrt(sq.mean())


def ause(predicted, error, steps: int = 20) -> float:
    """Area under the sparsification error: predicted ranking's curve minus the oracle's
    (ranking by the true error). 0 is a perfect ranking; lower is better."""
    gap = sparsification(predicted, error, steps) - sparsification(error, error, steps)
    return float(gap.mean())


def reliability(predicted, error, bins: int = 10) -> list[dict]:
    """Calibration by decile of the predicted block error: in each, the mean predicted RMSE and
    the measured RMSE (root of the mean squared block error) and their ratio."""
    predicted, error = np.asarray(predicted, dtype=np.float64), np.asarray(error, dtype=np.float64)
    edges = np.quantile(predicted, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        sel = which == i
        if not sel.any():
            continue
        pred = float(np.sqrt((predicted[sel] ** 2).mean()))
        meas = float(np.sqrt((error[sel] ** 2).mean()))
        out.append({"predicted": round(pred, 3), "measured": round(meas, 3),
                    "ratio": round(meas / max(pred, 1e-12), 3), "blocks": int(sel.sum())})
    return out


def mask_scores(flagged, error, worst: float = 0.1) -> dict:
    """How a block mask finds the worst ``worst`` fraction of blocks: precision (flagged blocks
    that are among the worst), recall (worst blocks flagged) and the fraction flagged."""
    flagged = np.asarray(flagged, dtype=bool)
    error = np.asarray(error, dtype=np.float64)
    bad = error >= np.quantile(error, 1 - worst)
    hits = int((flagged & bad).sum())
    return {"flagged": round(float(flagged.mean()), 3),
            "precision": round(hits / max(int(flagged.sum()), 1), 3),
            "recall": round(hits / max(int(bad.sum()), 1), 3)}


def judge_uncertainty(predicted_blocks, error_blocks, proxy_blocks) -> dict:
    """Every score of an uncertainty map against the block errors, next to the gradient proxy's."""
    return {
        "spearman": round(spearman(predicted_blocks, error_blocks), 3),
        "spearman_proxy": round(spearman(proxy_blocks, error_blocks), 3),
        "ause": round(ause(predicted_blocks, error_blocks), 4),
        "ause_proxy": round(ause(proxy_blocks, error_blocks), 4),
        "reliability": reliability(predicted_blocks, error_blocks),
    }



# ---- fitting the predicted error and the mask on validation ------------------------------------------
# napari_emdiffuse.uncertainty.predicted_error turns a result's sample spread and aleatoric std into
# the predicted RMS error; which sources, how much smoothing and what weights are chosen here, on
# the validation region, by how well the blocks are ranked (Spearman), then judged on test.
SOURCES = (("aleatoric",), ("spread",), ("aleatoric", "spread"))
SMOOTHING_PX = (0.0, 2.0, 4.0, 8.0, 16.0)
MASK_BUDGET, MASK_WORST, MASK_RECALL = 0.15, 0.10, 0.5
SPEARMAN_SLACK = 0.01


def block_mean_square(values, sigma: float, block: int = BLOCK) -> np.ndarray:
    """The block mean of ``values`` squared and smoothed by a Gaussian of ``sigma`` px (what a
    predicted-error source contributes to the block's mean square)."""

    return blocks(gaussian_smooth(np.asarray(values, dtype=np.float64) ** 2, sigma), block).mean(axis=1)


def fit_weights(mean_squares: dict, error_blocks) -> dict:
    """Weights ``w`` with ``sum_k w_k^2 * mean_square_k`` closest to the squared block errors
    (non-negative least squares; one source: its overall RMS matched to the error's)."""

    target = np.asarray(error_blocks, dtype=np.float64) ** 2
    names = list(mean_squares)
    design = np.stack([mean_squares[n] for n in names], axis=1)
    if len(names) == 1:
        w2 = [target.sum() / max(design[:, 0].sum(), 1e-12)]
    else:
        w2, _ = nnls(design, target)
    return {n: round(float(np.sqrt(v)), 4) for n, v in zip(names, w2)}


def fit_predicted_error(std, aleatoric, error_blocks, block: int = BLOCK,
                        sources=SOURCES, smoothing=SMOOTHING_PX) -> tuple[dict, list[dict]]:
    """The calibration of :func:`napari_emdiffuse.uncertainty.predicted_error` that ranks the
    blocks of a validation region best (Spearman; within ``SPEARMAN_SLACK`` of the best, the most
    smoothing, then the fewest sources), with its weights fitted there; when it needs the spread, a ``fallback`` on the aleatoric std alone for results of one
    sample. Returns (calibration, every candidate's scores)."""

    available = {"aleatoric": aleatoric, "spread": std}
    table = []
    for names in sources:
        if any(available[n] is None for n in names):
            continue
        for sigma in smoothing:
            weights = fit_weights({n: block_mean_square(available[n], sigma, block) for n in names}, error_blocks)
            weights = {n: w for n, w in weights.items() if w > 0} or weights  # a source weighted 0 is not needed
            if len(weights) < len(names) and any(r["weights"].keys() == weights.keys() and r["smoothing_px"] == sigma
                                                 for r in table):
                continue  # the same as a single-source candidate already scored
            cal = {"weights": weights, "smoothing_px": sigma}
            pred = block_rms(predicted_error(std, aleatoric, cal), block)
            table.append({**cal, "spearman": round(spearman(pred, error_blocks), 3),
                          "ause": round(ause(pred, error_blocks), 4)})
    if not table:
        raise ValueError("neither a sample spread nor an aleatoric std to calibrate: use 2+ samples")

    def best(rows):
        # within SPEARMAN_SLACK of the best ranking, the smoother map (regions, not speckle), then
        # the one that needs fewer sources
        top = max(r["spearman"] for r in rows)
        near = [r for r in rows if r["spearman"] >= top - SPEARMAN_SLACK]
        row = max(near, key=lambda r: (r["smoothing_px"], -len(r["weights"]), r["spearman"], -r["ause"]))
        return {"weights": row["weights"], "smoothing_px": row["smoothing_px"]}

    chosen = best(table)
    alone = [r for r in table if list(r["weights"]) == ["aleatoric"]]
    if "spread" in chosen["weights"] and alone:  # one sample has no spread: the aleatoric std alone
        chosen["fallback"] = best(alone)
    return chosen, table


def mask_threshold(predicted_blocks, error_blocks, budget: float = MASK_BUDGET, worst: float = MASK_WORST,
                   recall: float = MASK_RECALL) -> dict:
    """The reliability mask's threshold on the predicted block error (intensity units), chosen on
    validation by the stated target: flag the fewest blocks that hold at least ``recall`` of the
    worst ``worst`` fraction, never more than ``budget`` of them; where no fraction up to
    ``budget`` reaches that recall, flag ``budget`` (the most recall the budget allows)."""
    predicted = np.asarray(predicted_blocks, dtype=np.float64)
    fractions = np.round(np.arange(0.01, budget + 1e-9, 0.01), 2)
    for f in fractions:
        tau = float(np.quantile(predicted, 1 - f))
        got = mask_scores(predicted > tau, error_blocks, worst)
        if got["recall"] >= recall:
            return {"threshold": tau, "target_met": True, **got}
    tau = float(np.quantile(predicted, 1 - budget))
    return {"threshold": tau, "target_met": False, **mask_scores(predicted > tau, error_blocks, worst)}


# Pass marks of a predicted-error map on test (issue 14): against the better of the proxies,
# Spearman at least SPEARMAN_GAIN higher and AUSE at most AUSE_RATIO times; in every decile of the
# predicted error the measured block RMSE within CALIBRATION_TOLERANCE of it.
SPEARMAN_GAIN, AUSE_RATIO, CALIBRATION_TOLERANCE = 0.10, 0.8, 0.15


def calibrate_uncertainty(std, aleatoric, error_blocks, span: float, block: int = BLOCK) -> dict:
    """A model card's ``uncertainty`` section from a validation region: the predicted-error
    calibration (:func:`fit_predicted_error`) and the reliability mask's threshold
    (:func:`mask_threshold`), stated in the model's [-1, 1] units (``2 / span`` times the
    predicted error, ``span`` the normaliser's hi - lo), and the validation scores of both."""

    calibration, table = fit_predicted_error(std, aleatoric, error_blocks, block)
    predicted = block_rms(predicted_error(std, aleatoric, calibration), block)
    mask = mask_threshold(predicted, error_blocks)
    return {"predicted_error": calibration,
            "threshold": round(mask["threshold"] * 2 / span, 5),
            "mask_from": "predicted_error",
            "mask_target": f"the fewest validation blocks that hold at least {MASK_RECALL:.0%} of the worst "
                           f"{MASK_WORST:.0%}, at most {MASK_BUDGET:.0%} flagged",
            "validation": {"spearman": round(spearman(predicted, error_blocks), 3),
                           "ause": round(ause(predicted, error_blocks), 4),
                           "mask": {k: v for k, v in mask.items() if k != "threshold"}},
            "candidates": table}


def within_images(score, predicted_blocks, error_blocks, images: int) -> float:
    """The mean of ``score`` computed image by image (blocks in :func:`blocks` order): how well a
    map ranks the blocks of one image, apart from telling a harder image from an easier one."""
    parts = zip(np.array_split(np.asarray(predicted_blocks), images), np.array_split(np.asarray(error_blocks), images))
    return float(np.mean([score(p, e) for p, e in parts]))


def judge_predicted_error(predicted_blocks, error_blocks, proxies: dict, flagged=None, images: int = 1) -> dict:
    """:func:`judge_uncertainty` against every proxy (e.g. the gradient of the input and of the
    output), with the pass marks: ``ranks`` (Spearman and AUSE beat the *better* proxy by the
    margins above), ``calibrated`` (every decile within the tolerance), and the mask's precision
    and recall when ``flagged`` blocks are given. For a stack of ``images`` planes, the Spearman
    within each image (averaged) is reported too, for the map and each proxy."""
    predicted_blocks = np.asarray(predicted_blocks, dtype=np.float64)
    out = {"spearman": round(spearman(predicted_blocks, error_blocks), 3),
           "ause": round(ause(predicted_blocks, error_blocks), 4), "proxies": {}}
    if images > 1:
        out["spearman_within_images"] = round(within_images(spearman, predicted_blocks, error_blocks, images), 3)
    for name, proxy in proxies.items():
        out["proxies"][name] = {"spearman": round(spearman(proxy, error_blocks), 3),
                                "ause": round(ause(proxy, error_blocks), 4)}
        if images > 1:
            out["proxies"][name]["spearman_within_images"] = round(within_images(spearman, proxy, error_blocks, images), 3)
    best_proxy = max(proxies, key=lambda name: out["proxies"][name]["spearman"])
    best_ause = min(p["ause"] for p in out["proxies"].values())
    out["spearman_gain"] = round(out["spearman"] - out["proxies"][best_proxy]["spearman"], 3)
    out["spearman_gain_ci95"] = spearman_gap(predicted_blocks, error_blocks, proxies[best_proxy], error_blocks)["ci95"]
    out["ause_ratio"] = round(out["ause"] / max(best_ause, 1e-12), 3)
    out["ranks"] = bool(out["spearman_gain"] >= SPEARMAN_GAIN and out["ause_ratio"] <= AUSE_RATIO)
    out["reliability"] = reliability(predicted_blocks, error_blocks)
    out["calibrated"] = bool(all(abs(b["ratio"] - 1) <= CALIBRATION_TOLERANCE for b in out["reliability"]))
    out["rms_predicted"] = round(float(np.sqrt((predicted_blocks ** 2).mean())), 3)
    out["rms_measured"] = round(float(np.sqrt((np.asarray(error_blocks, dtype=np.float64) ** 2).mean())), 3)
    if flagged is not None:
        out["mask"] = mask_scores(flagged, error_blocks, MASK_WORST)
    return out

# ---- a case with exact ground truth ------------------------------------------------------------------
# On the real pair the reference has its own noise and drifts against the input by a fraction of a
# pixel, which blurs every error figure. A synthetic pair avoids both: the truth is the reference,
# lightly filtered, and the input is that truth plus noise with the real acquisition's strength,
# intensity dependence and spatial correlation, measured on the training rows.
REFERENCE_NOISE_SHARE = 1 / 9  # 36 us vs 4 us dwell: shot noise variance scales as 1 / dwell


def _three_taps(rho: float) -> float:
    """c such that the kernel [c, 1, c] gives white noise a lag-1 autocorrelation ``rho``."""
    rho = float(np.clip(rho, 0.0, 0.7))
    return 0.0 if rho == 0 else float((1 - np.sqrt(1 - 2 * rho ** 2)) / (2 * rho))


def noise_model(noisy, reference) -> dict:
    """Noise of ``noisy`` against a better acquisition of the same field, in ``noisy``'s units:
    its variance as a linear function of intensity (fitted on the flattest 30% of pixels, where
    drift between the acquisitions costs least) and its lag-1 correlation along y and x. The
    reference's own noise is removed assuming shot noise (:data:`REFERENCE_NOISE_SHARE`)."""

    noisy = np.asarray(noisy, dtype=np.float64)
    matched = affine_match(reference, noisy)
    resid = noisy - matched
    grad = np.hypot(*np.gradient(gaussian_filter(matched, 1.0)))
    flat = grad <= np.quantile(grad, 0.3)
    edges = np.quantile(matched[flat], np.linspace(0, 1, 9))
    level, var = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = flat & (matched >= lo) & (matched <= hi)
        level.append(matched[sel].mean())
        var.append(resid[sel].var())
    slope, intercept = np.polyfit(level, var, 1)
    keep = 1 / (1 + REFERENCE_NOISE_SHARE)
    centred = resid - resid.mean()

    def lag1(axis: int) -> float:
        return float((centred * np.roll(centred, 1, axis)).mean() / centred.var())

    return {"var_intercept": float(intercept * keep), "var_slope": float(slope * keep),
            "rho_y": lag1(0), "rho_x": lag1(1), "std": float(np.sqrt(resid[flat].var() * keep))}


def correlated_noise(shape, model: dict, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian noise with ``model``'s lag-1 correlations along y and x."""

    n = rng.standard_normal(shape)
    for axis, key in ((-2, "rho_y"), (-1, "rho_x")):
        c = _three_taps(model[key])
        n = convolve1d(n, [c, 1.0, c], axis=axis, mode="wrap")
    return n / n.std()


def noisier_copy(image, std: float, seed: int = 0) -> np.ndarray:
    """``image`` (uint8) with white Gaussian noise of ``std`` grey levels added: the protocol's
    "noisier" input (``std`` the acquisition's own, :func:`noise_model` on the training rows, so
    that the copy has about twice the noise variance: half the dwell time)."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(image + rng.normal(0, std, np.shape(image))), 0, 255).astype(np.uint8)


def sem_like_noise(image, model: dict, model_span: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """(uint8 image, std added): ``image`` with noise as strong, relative to its intensity span (0.1-99.9
    percentiles), as ``model``'s (:func:`noise_model`) is relative to ``model_span``, and as correlated:
    another modality given the SEM acquisition's noise."""
    lo, hi = np.percentile(image, [0.1, 99.9])
    std = float(model["std"] / model_span * (hi - lo))
    noised = np.clip(np.rint(image + std * correlated_noise(np.shape(image), model, rng)), 0, 255).astype(np.uint8)
    return noised, std


def synthetic_pair(noisy, reference, model: dict, seed: int = 0, blur: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """(input uint8, truth float64) for a region of a real pair: the truth is ``reference``
    Gaussian-filtered by ``blur`` px and mapped to ``noisy``'s intensities; the input adds noise
    from :func:`noise_model` (fitted elsewhere, e.g. on the training rows). Score with peak 255."""

    truth = affine_match(gaussian_filter(np.asarray(reference, dtype=np.float64), blur), noisy)
    std = np.sqrt(np.clip(model["var_intercept"] + model["var_slope"] * truth, 1e-6, None))
    rng = np.random.default_rng(seed)
    image = np.clip(np.rint(truth + std * correlated_noise(truth.shape, model, rng)), 0, 255).astype(np.uint8)
    return image, truth
