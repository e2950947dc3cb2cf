"""``emdiffuse superres INPUT -o OUTPUT [--scale 2]``: super-resolution of a 2D image or a stack."""
from __future__ import annotations

import argparse

from .common import add_restore_arguments, positive_int, run_restore_command

DEFAULT_MODEL = "superres-sstem"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "superres", help="super-resolve a 2D image or a stack (TIFF or zarr) x2",
        description="Super-resolve a 2D EM image or a (Z, Y, X) stack slice by slice: OUTPUT has SCALE "
                    "times more pixels in Y and X and a pixel size SCALE times smaller. With 2 or more "
                    "samples the per-pixel standard deviation is written next to OUTPUT as OUTPUT_std.")
    add_restore_arguments(parser, default_model=DEFAULT_MODEL)
    parser.add_argument("--scale", type=positive_int, default=None, metavar="S",
                        help="upscaling factor; must be the model's (default: the model's, 2 for the bundled one)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tasks.superres import superres

    def restore_fn(image, model, **kwargs):
        return superres(image, model, scale=args.scale, **kwargs)

    return run_restore_command(args, "superres", restore_fn=restore_fn)
