"""The ``emdiffuse`` command line. Each subcommand lives in its own module of this package,
exposing ``add_parser(subparsers)`` (which sets ``func``) ; modules are imported lazily."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module in this package
SUBCOMMANDS = {
    "models": "models_cmd",
    "denoise": "denoise_cmd",
    "superres": "superres_cmd",
    "isotropic": "isotropic_cmd",
    "train": "train_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emdiffuse",
        description="Diffusion-model restoration of EM images with per-pixel uncertainty.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seen = set()
    for module in SUBCOMMANDS.values():
        if module in seen:
            continue
        seen.add(module)
        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{module}":  # not written yet
                continue
            raise
        mod.add_parser(sub)
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
