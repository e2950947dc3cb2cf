"""``emdiffuse denoise INPUT -o OUTPUT``: diffusion denoising with per-pixel uncertainty."""
from __future__ import annotations

import argparse

from .common import DEFAULT_MODELS, add_restore_arguments, run_restore_command


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "denoise", help="denoise a 2D image or a stack (TIFF or zarr)",
        description="Denoise a 2D EM image or a (Z, Y, X) stack slice by slice. With 2 or more samples "
                    "the per-pixel standard deviation is written next to OUTPUT as OUTPUT_std.")
    add_restore_arguments(parser, default_model=DEFAULT_MODELS["denoise"])
    parser.add_argument("--estimate", choices=["posterior_mean", "sample_mean"],
                        help="the restored image: the model's posterior mean (no sampling noise) or the "
                             "mean of the samples, as EMDiffuse does (default: the model card's)")
    parser.add_argument("--ensemble", type=int, metavar="E",
                        help="posterior mean averaged over E of the 8 rotations/flips (default: the model card's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_restore_command(args, "denoise", extra={"estimate": args.estimate, "ensemble": args.ensemble})
