"""Super-resolution of 2D images and stacks, slice by slice: the network is conditioned on the
bicubic upsampling of the normalised low-resolution plane, and trained on high-resolution images
whose ``scale`` x ``scale`` mean binning plays the low-resolution input."""
from __future__ import annotations

import argparse

import numpy as np

from .base import Geometry, Task, positive_int


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
    import torch  # lazily: the task registry stays light for the widgets
    import torch.nn.functional as F

    image = np.asarray(image, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(image).reshape(-1, 1, *image.shape[-2:]))
    with torch.no_grad():
        up = F.interpolate(t, scale_factor=scale, mode="bicubic", align_corners=False)
    return up.numpy().reshape(*image.shape[:-2], *up.shape[-2:])


def bicubic_baseline(low_res, scale: int, dtype=None) -> np.ndarray:
    """The baseline a model must beat: bicubic upsampling, clipped to the input's range."""
    low_res = np.asarray(low_res)
    up = np.clip(upsample(low_res, scale), float(low_res.min()), float(low_res.max()))
    if dtype is not None and np.issubdtype(np.dtype(dtype), np.integer):
        return np.rint(up).astype(dtype)
    return up


def model_scale(model) -> int:
    return int((model.card.get("superres") or {}).get("scale", 2))


class Superres(Task):
    name = "superres"
    label = "super-resolution"
    default_model = "superres-sstem"
    summary = "super-resolve a 2D image or a stack (TIFF or zarr) x2"
    description = ("Super-resolve a 2D EM image or a (Z, Y, X) stack slice by slice: OUTPUT has SCALE times more "
                   "pixels in Y and X and a pixel size SCALE times smaller. With 2 or more samples the "
                   "per-pixel standard deviation is written next to OUTPUT as OUTPUT_std.")
    trained_description = "super-resolution model trained on the user's high-resolution images"
    training_summary = "from high-resolution images (the input is made by binning)"
    training_description = ("Train a super-resolution model on high-resolution images: the low-resolution input is "
                            "their SCALE x SCALE binning.")
    training_inputs = (("high_res", "high-res image"),)
    training_options = ("scale",)

    def geometry(self, model, scale: int | None = None, **_) -> Geometry:
        trained = model_scale(model)
        if scale is not None and int(scale) != trained:
            raise ValueError(f"model {model.name!r} super-resolves x{trained}, not x{scale} — "
                             f"pass --scale {trained} or choose a x{scale} model")
        return Geometry(scale=trained)

    def condition(self, model, plane: np.ndarray, geometry: Geometry) -> np.ndarray:
        return upsample(plane[None, None], geometry.scale)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--scale", type=positive_int, default=None, metavar="S",
                            help="upscaling factor; must be the model's (default: the model's, 2 for the bundled one)")

    def params(self, args: argparse.Namespace) -> dict:
        return {"scale": args.scale}

    def add_training_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--target", nargs="+", required=True, metavar="HR", help="high-resolution images (TIFF or zarr)")
        parser.add_argument("--scale", type=positive_int, default=2, metavar="S", help="upscaling factor (default: 2)")

    def training_arguments(self, args: argparse.Namespace) -> dict:
        return {"high_res": args.target, "scale": args.scale}

    def training_data(self, normalization: dict | None = None, **inputs):
        from ..training.datasets import superres_data  # lazily: training brings torch, the registry stays light

        return superres_data(normalization=normalization, **inputs)


SUPERRES = Superres()
