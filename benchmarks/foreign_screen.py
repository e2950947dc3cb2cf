"""Candidate signs that the SEM denoiser faces an input it fails on, screened on development data:
whether any of them tells FIB-SEM with SEM-like noise (the one foreign input the card's validation
check misses, docs/benchmarks.md) from SEM of the model's own acquisition.

    OMP_NUM_THREADS=1 python benchmarks/foreign_screen.py

Development data only: the SEM pair's val and train rows (as acquired, noisier, other contrast, 2x
binned), ssTEM val sections and FlyEM FIB-SEM *training* slices (of the isotropic preset). The
foreign-modality figures of `denoise_quality.py` use other slices (its OTHER_MODALITIES); none of
them is read here. "fails" is the model's PSNR against a Gaussian filter (sigma 0.9, tuned on the
SEM val rows) on the known clean image. Candidates, each printed per input:

* structure_removed: correlation of what restoring removed (input minus the output affine-matched
  to it, smoothed 1 px) with the output's detail (difference of Gaussians, 1 and 3 px). Removed
  noise is uncorrelated with detail; removed structure is not.
* structure_scale: lag-4 autocorrelation of the output (size of its structures in pixels).
* recorrupted_db: a ground-truth-free estimate of the model's margin over the Gaussian filter:
  y1 = y + z and y2 = y - z with z drawn from the acquisition's noise model (fitted on the train
  rows); where z has the input noise's covariance, the error of a restoration of y1 against y2 is
  its error against the truth plus a constant shared by both restorations.
* feature_distance: how far the network's own view of the input lies from the SEM it was trained
  on: the UNet's middle-block activations (noisiest level, fixed noise draw), averaged over each
  crop of up to 96 x 96 (at most 16 over up to 4 planes), as a z-score against 80 random crops of
  the train rows; the RMS over channels, the median over the input's crops (fewer than 4 crops:
  too small to judge, NaN). Its limit would be 1.1 x the larger of the val rows' distance and
  their noisier copy's. Last, its cost on the whole sample image next to the restore's.
* intensity_distance: how far the input's grey-level distribution lies from the train rows': the
  mean absolute difference of 19 quantiles (5%, 10%, ..., 95%) of each, scaled by its own 0.1 and
  99.9 pixel percentiles (the normaliser's are of 2 x 2 block means). The control printed last: its
  spread over every 61 x 250 crop of the SEM val rows (as acquired and noisier), SEM of the right
  kind at the FIB-SEM test slices' size.

Not adopted (docs/benchmarks.md): none of the five tells FIB-SEM with SEM-like noise from SEM
reliably; the feature distance also rises with noise and with smaller crops, which the SEM val
rows cut as the FIB-SEM test slices are (61 x 250) show; the intensity distance of single SEM
crops of that size spreads as far as FIB-SEM's.
"""
from __future__ import annotations

import json
import time
from typing import Sequence

import numpy as np
import tifffile
import torch
from scipy.ndimage import gaussian_filter

from _common import REPO, header
from napari_emdiffuse import evaluation as ev
from napari_emdiffuse.engine import fit_normalizer
from napari_emdiffuse.api import restore
from napari_emdiffuse.loading import load_model
from napari_emdiffuse.sample_data import load_pair

GAUSSIAN_SIGMA = 0.9  # denoise_quality.py's val-tuned sigma for the 4 us input
DEVELOPMENT_FOREIGN = {  # (file, slices): none of these is in OTHER_MODALITIES
    "ssTEM val sections": ("weights/data/sstem_isbi2012_val.tif", [0, 5]),
    "FIB-SEM train slices": ("weights/data/fibsem_flyem_train.tif", [8, 24, 40, 56]),
    "FIB-SEM train2 slices": ("weights/data/fibsem_flyem_train2.tif", [10, 50]),
}


def planes(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64).reshape(-1, *np.shape(image)[-2:])


def gaussian(image) -> np.ndarray:
    return np.stack([gaussian_filter(p, GAUSSIAN_SIGMA) for p in planes(image)])


def correlation(a, b) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).mean() / np.sqrt((a * a).mean() * (b * b).mean()))


def structure_removed(image, output) -> float:
    removed = np.stack([gaussian_filter(i - ev.affine_match(o, i), 1.0) for i, o in zip(planes(image), planes(output))])
    detail = np.stack([gaussian_filter(o, 1.0) - gaussian_filter(o, 3.0) for o in planes(output)])
    return correlation(removed, detail)


def structure_scale(output, lag: int = 4) -> float:
    num = den = 0.0
    for p in planes(output):
        p = p - p.mean()
        num += (p[lag:] * p[:-lag]).mean() + (p[:, lag:] * p[:, :-lag]).mean()
        den += 2 * (p * p).mean()
    return num / den


def recorrupted_db(model, image, noise: dict, noise_span: float, seed: int = 11) -> float:
    """10 log10 of the Gaussian filter's over the model's error against y - z (positive: the model
    is estimated to be better)."""
    y = planes(image)
    lo, hi = np.percentile(y, [0.1, 99.9])
    scale = (hi - lo) / noise_span  # the noise model in this image's intensity units
    level = gaussian_filter(y, (0, 1, 1)) / scale
    std = np.sqrt(np.clip(noise["var_intercept"] + noise["var_slope"] * level, 1e-6, None)) * scale
    z = std * ev.correlated_noise(y.shape, noise, np.random.default_rng(seed))
    y1, y2 = y + z, y - z
    output = planes(restore(y1.reshape(np.shape(image)).astype(np.float32), model, device="cpu", seed=0).mean)
    model_err = ((ev.affine_match(output, y2) - y2) ** 2).mean()
    filter_err = ((ev.affine_match(gaussian(y1), y2) - y2) ** 2).mean()
    return float(10 * np.log10(filter_err / model_err))


# ---- the feature distance (a candidate, not shipped) ------------------------------------------------
CROP = 96  # px; the demo pair's validation band is 96 rows high
MAX_CROPS = 16  # evenly spaced over a larger input: a fraction of a restore
MIN_CROPS = 4
SCREENED_PLANES = 4
SEED = 0


def crop_windows(shape: tuple[int, int], multiple: int, crop: int = CROP, limit: int | None = MAX_CROPS) -> list[tuple[int, int, int, int]]:
    """Non-overlapping (y, x, h, w) crops of a plane, ``crop`` px or the plane's size rounded down
    to the network's ``multiple``; at most ``limit`` of them, evenly spaced."""
    h = min(crop, shape[0] // multiple * multiple)
    w = min(crop, shape[1] // multiple * multiple)
    if h == 0 or w == 0:
        return []
    windows = [(y, x, h, w) for y in range(0, shape[0] - h + 1, h) for x in range(0, shape[1] - w + 1, w)]
    if limit is not None and len(windows) > limit:
        windows = [windows[int(i)] for i in np.linspace(0, len(windows) - 1, limit).round()]
    return windows


def middle_features(model, plane: np.ndarray, windows) -> np.ndarray:
    """(crops, channels): the middle block's channel means on each crop of a normalised plane,
    the network seeing the crop as its condition at the noisiest level (as the posterior mean
    does), with noise drawn from a fixed seed."""
    network = model.network
    device = next(network.parameters()).device
    captured: list[torch.Tensor] = []
    hook = network.middle_block.register_forward_hook(
        lambda module, args, out: captured.append(out.float().mean(dim=(-2, -1))))
    try:
        crops = np.stack([plane[y:y + h, x:x + w] for y, x, h, w in windows])[:, None]
        condition = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32)).to(device)
        generator = torch.Generator().manual_seed(SEED)
        sigma = float(model.diffusion["sigma_max"])
        x = (torch.randn(condition.shape, generator=generator) * sigma).to(device)
        with torch.no_grad():
            model.denoiser().with_logvar(x, sigma, condition)
    finally:
        hook.remove()
    return torch.cat(captured).cpu().numpy().astype(np.float64)


def feature_reference(model, plane: np.ndarray, crops: int = 80, seed: int = 0) -> dict:
    """The feature mean and std over ``crops`` random :data:`CROP` x :data:`CROP` crops of a
    normalised plane of training data."""
    rng = np.random.default_rng(seed)
    windows = [(int(rng.integers(0, plane.shape[0] - CROP + 1)), int(rng.integers(0, plane.shape[1] - CROP + 1)), CROP, CROP)
               for _ in range(crops)]
    feats = middle_features(model, plane, windows)
    return {"mean": feats.mean(axis=0), "std": feats.std(axis=0) + 1e-4}


def crops_distance(model, planes: Sequence[np.ndarray], features: dict) -> float | None:
    """The median over crops of normalised planes (at most :data:`MAX_CROPS` in all) of the RMS
    z-score of their features against the reference ``features`` (mean, std); None when the planes
    hold fewer than :data:`MIN_CROPS` crops."""
    multiple = int(model.network.downsample_factor)
    per_plane = max(1, MAX_CROPS // len(planes))
    feats = [middle_features(model, np.asarray(p), w) for p in planes
             if (w := crop_windows(tuple(np.shape(p)[-2:]), multiple, limit=per_plane))]
    if sum(len(f) for f in feats) < MIN_CROPS:
        return None
    z = (np.concatenate(feats) - np.asarray(features["mean"])) / np.asarray(features["std"])
    return float(np.median(np.sqrt((z ** 2).mean(axis=1))))


def feature_distance(model, image, features: dict) -> float | None:
    """The input normalised as a whole; up to :data:`SCREENED_PLANES` evenly spaced planes."""
    planes = fit_normalizer(image, model)(image).reshape(-1, *np.shape(image)[-2:])
    picks = np.unique(np.linspace(0, len(planes) - 1, min(len(planes), SCREENED_PLANES)).round().astype(int))
    return crops_distance(model, [planes[z] for z in picks], features)


QUANTILES = np.linspace(0.05, 0.95, 19)


def intensity_quantiles(image) -> np.ndarray:
    values = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(values, [0.1, 99.9])
    return (np.quantile(values, QUANTILES) - lo) / max(hi - lo, 1e-12)


def intensity_distance(image, reference: np.ndarray) -> float:
    return float(np.abs(intensity_quantiles(image) - reference).mean())


def crop_spread(image, reference: np.ndarray, shape=(61, 250), stride=(8, 16)) -> dict:
    """The intensity distance over every ``shape`` crop of a plane: median, 95th percentile, max."""
    h, w = shape
    d = [intensity_distance(image[y:y + h, x:x + w], reference)
         for y in range(0, image.shape[0] - h + 1, stride[0]) for x in range(0, image.shape[1] - w + 1, stride[1])]
    return {"crops": len(d), "median": round(float(np.median(d)), 3), "p95": round(float(np.percentile(d, 95)), 3),
            "max": round(float(np.max(d)), 3)}


def cases(noisy_full, clean_full, noise: dict, noise_span: float) -> dict:
    val, train = ev.rows_of("demo-denoise", "val"), ev.rows_of("demo-denoise", "train")
    vn, vc = noisy_full[val], clean_full[val]
    tn, tc = noisy_full[train], clean_full[train]
    h, w = tn.shape[0] // 2 * 2, tn.shape[1] // 2 * 2
    out = {"SEM val rows": (vn, vc), "SEM val, noisier": (ev.noisier_copy(vn, noise["std"], seed=1), vc),
           "SEM train rows": (tn, tc), "SEM val, gamma 0.7": (np.clip(255 * (vn / 255.0) ** 0.7, 0, 255).astype(np.uint8), vc),
           "SEM train rows, 2x binned": (tn[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3)).astype(np.uint8),
                                         tc[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3)))}
    out["SEM val rows cut as 3 slices of 61 x 250"] = (np.stack([vn[:61, i * 250:(i + 1) * 250] for i in range(3)]),
                                                      np.stack([vc[:61, i * 250:(i + 1) * 250] for i in range(3)]))
    rng = np.random.default_rng(5)
    for strength in (1, 2):  # a faster scan of the same tissue: more of the acquisition's own (correlated) noise
        louder = vn + strength * noise["std"] * ev.correlated_noise(vn.shape, noise, rng)
        out[f"SEM val, + {strength}x its own noise"] = (np.clip(np.rint(louder), 0, 255).astype(np.uint8), vc)
    for name, (path, slices) in DEVELOPMENT_FOREIGN.items():
        clean = tifffile.imread(REPO / path)[slices]
        out[name] = (clean, clean)
        out[name + ", SEM-like noise"] = (ev.sem_like_noise(clean, noise, noise_span, rng)[0], clean)
    return out


def main() -> None:
    torch.set_num_threads(1)
    header("candidate signs of failure on development data (never the foreign-modality test slices)")
    noisy_full, clean_full = load_pair()
    train = ev.rows_of("demo-denoise", "train")
    noise = ev.noise_model(noisy_full[train], clean_full[train])
    lo, hi = np.percentile(noisy_full[train], [0.1, 99.9])
    model = load_model("demo-denoise")
    features = feature_reference(model, fit_normalizer(noisy_full[train], model)(noisy_full[train]))
    quantiles = intensity_quantiles(noisy_full[train])
    for name, (image, clean) in cases(noisy_full, clean_full, noise, hi - lo).items():
        output = restore(image, model, device="cpu", seed=0).mean
        row = {"input": name,
               "model_minus_gaussian_db": round(ev.psnr(output, clean) - ev.psnr(gaussian(image).reshape(np.shape(image)), clean), 2),
               "structure_removed": round(structure_removed(image, output), 3),
               "structure_scale": round(structure_scale(output), 3),
               "recorrupted_db": round(recorrupted_db(model, image, noise, hi - lo), 3),
               "feature_distance": round(feature_distance(model, image, features) or float("nan"), 3),
               "intensity_distance": round(intensity_distance(image, quantiles), 3)}
        print(json.dumps(row), flush=True)
    val = noisy_full[ev.rows_of("demo-denoise", "val")]
    for name, image in {"SEM val rows": val, "SEM val, noisier": ev.noisier_copy(val, noise["std"], seed=1)}.items():
        print(json.dumps({"control": f"intensity_distance of 61 x 250 crops of the {name}", **crop_spread(image, quantiles)}))
    t0 = time.perf_counter()
    feature_distance(model, noisy_full, features)
    screen = time.perf_counter() - t0
    t0 = time.perf_counter()
    restore(noisy_full, model, device="cpu", seed=0)
    print(f"# cost on the whole {noisy_full.shape[0]} x {noisy_full.shape[1]} sample image: feature distance "
          f"{screen:.2f} s, restore at the card's settings {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
