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
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

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
