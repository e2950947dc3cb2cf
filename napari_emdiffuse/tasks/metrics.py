"""Image quality against a reference: PSNR and SSIM over the reference's intensity range."""
from __future__ import annotations

import numpy as np


def psnr(image, reference, data_range: float) -> float:
    mse = float(np.mean((np.asarray(image, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return float(10 * np.log10(data_range ** 2 / max(mse, 1e-12)))


def ssim(image, reference, data_range: float) -> float:
    """Mean SSIM; stacks are scored slice by slice (2D windows), as they are viewed."""
    from skimage.metrics import structural_similarity

    image, reference = np.asarray(image, np.float64), np.asarray(reference, np.float64)
    if image.ndim == 2:
        return float(structural_similarity(image, reference, data_range=data_range))
    return float(np.mean([structural_similarity(a, b, data_range=data_range) for a, b in zip(image, reference)]))


def scores(image, reference, data_range: float) -> dict:
    return {"psnr": round(psnr(image, reference, data_range), 2), "ssim": round(ssim(image, reference, data_range), 4)}
