"""2D super-resolution: training pairs from high-resolution images, the bicubic baseline, and
inference through the tiled restore core (which conditions on the bicubic upsampling of the
normalised low-resolution image, exactly as :func:`upsample` does here)."""
from __future__ import annotations

import numpy as np

from ..normalize import Normalizer


def crop_to_multiple(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[-2:]
    return image[..., : h - h % factor, : w - w % factor]


def bin_mean(image, factor: int = 2) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` pixel blocks of the last two axes (float32): what a scan
    with ``factor`` times the pixel size approximates. Edges that do not fill a block are dropped."""
    image = crop_to_multiple(np.asarray(image, dtype=np.float32), factor)
    h, w = image.shape[-2:]
    blocks = image.reshape(*image.shape[:-2], h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(-3, -1), dtype=np.float64).astype(np.float32)


def upsample(image, scale: int) -> np.ndarray:
    """Bicubic upsampling of the last two axes by ``scale`` (float32), the model's condition."""
    import torch
    import torch.nn.functional as F

    image = np.asarray(image, dtype=np.float32)
    t = torch.from_numpy(image.reshape(-1, 1, *image.shape[-2:]))
    with torch.no_grad():
        up = F.interpolate(t, scale_factor=scale, mode="bicubic", align_corners=False)
    return up.numpy().reshape(*image.shape[:-2], *up.shape[-2:])


def bicubic_baseline(low_res, scale: int, dtype=None) -> np.ndarray:
    """The baseline a model must beat: bicubic upsampling, clipped to the input's range."""
    low_res = np.asarray(low_res)
    up = upsample(low_res, scale)
    up = np.clip(up, float(low_res.min()), float(low_res.max()))
    if dtype is not None and np.issubdtype(np.dtype(dtype), np.integer):
        return np.rint(up).astype(dtype)
    return up


def training_pairs(high_res, scale: int = 2, low: float = 0.1, high: float = 99.9):
    """(condition, target) arrays for :class:`~napari_emdiffuse.training.data.PatchPairs` from
    high-resolution images (Y, X) or (N, Y, X): the low-resolution input is their ``scale`` x
    ``scale`` mean binning. Both are normalised with the low-resolution image's percentiles, as
    the restore core normalises its input at inference."""
    hr = crop_to_multiple(np.asarray(high_res, dtype=np.float32), scale)
    hr = hr[None] if hr.ndim == 2 else hr
    lr = bin_mean(hr, scale)
    norm = Normalizer.fit(lr, low, high)
    condition = upsample(norm(lr), scale)[:, None]
    target = norm(hr)[:, None]
    return condition, target


def model_scale(model) -> int:
    return int((model.card.get("superres") or {}).get("scale", 2))


def superres(image, model, scale: int | None = None, **kwargs):
    """Super-resolve a 2D image or a stack (slice by slice): :func:`restore.restore` with a
    super-resolution model, whose output is ``scale`` times larger in Y and X (so a viewer
    scales that layer by 1/scale to overlay the input). ``scale`` only checks the model's."""
    from ..loading import load_model
    from ..restore import restore

    if not hasattr(model, "card"):
        model = load_model(model, task="superres")
    model.require_task("superres")
    if scale is not None and int(scale) != model_scale(model):
        raise ValueError(f"model {model.name!r} super-resolves x{model_scale(model)}, not x{scale} — "
                         f"pass --scale {model_scale(model)} or choose a x{scale} model")
    return restore(image, model, task="superres", **kwargs)
