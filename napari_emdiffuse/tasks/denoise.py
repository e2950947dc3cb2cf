"""Denoising of 2D images and stacks, slice by slice, trained on noisy / clean pairs."""
from __future__ import annotations

import argparse

from .base import Task


class Denoise(Task):
    name = "denoise"
    label = "denoise"
    default_model = "demo-denoise"
    summary = "denoise a 2D image or a stack (TIFF or zarr)"
    description = ("Denoise a 2D EM image or a (Z, Y, X) stack slice by slice. With 2 or more samples the "
                   "per-pixel standard deviation is written next to OUTPUT as OUTPUT_std.")
    trained_description = "denoising model trained on the user's noisy/clean pairs"
    training_summary = "from noisy / clean pairs of the same field"
    training_description = ("Train a denoiser on noisy (fast scan) / clean (slow scan) pairs. Each pair's registration "
                            "is checked; --register aligns a misregistered pair.")
    training_inputs = (("noisy", "noisy image"), ("clean", "clean image"))
    training_options = ("register",)

    def add_training_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--input", nargs="+", required=True, metavar="NOISY",
                            help="noisy images (TIFF or zarr, 2D or stacks)")
        parser.add_argument("--target", nargs="+", required=True, metavar="CLEAN", help="clean images, in the same order")
        parser.add_argument("--register", action="store_true",
                            help="align misregistered pairs (global shift by phase correlation, then optical flow)")
        parser.add_argument("--no-check", dest="check", action="store_false", help="skip the registration check")
        parser.add_argument("--extra-noise", type=float, default=0.0, metavar="S",
                            help="also train on inputs with up to S more Gaussian noise (normalised units), "
                                 "for faster scans")

    def training_arguments(self, args: argparse.Namespace) -> dict:
        return {"noisy": args.input, "clean": args.target, "register": args.register, "check": args.check,
                "extra_noise": args.extra_noise}

    def training_data(self, normalization: dict | None = None, **inputs):
        from ..training.datasets import denoise_data  # lazily: training brings torch, the registry stays light

        return denoise_data(normalization=normalization, **inputs)


DENOISE = Denoise()
