"""The ``emdiffuse`` command line: ``models``, one restoring subcommand per registered task
(denoise, superres, isotropic, ...: :mod:`.restore_cmd`), ``train`` and ``export``. Each module exposes
``add_parser(subparsers)`` (which sets ``func``)."""
from __future__ import annotations

import argparse
import sys

from . import export_cmd, models_cmd, restore_cmd, train_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emdiffuse",
        description="Diffusion-model restoration of EM images with per-pixel uncertainty.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    models_cmd.add_parser(sub)
    restore_cmd.add_parsers(sub)
    train_cmd.add_parser(sub)
    export_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
