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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_restore_command(args, "denoise")
