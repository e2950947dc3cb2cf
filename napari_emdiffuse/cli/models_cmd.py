"""``emdiffuse models``: the bundled model presets and their sampling defaults."""
from __future__ import annotations

import argparse

from ..loading import list_presets, models_dir
from .common import handle_errors


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the bundled models",
                                   description="List the bundled model presets (use their name with --model).")
    parser.set_defaults(func=run)


@handle_errors
def run(args: argparse.Namespace) -> int:
    presets = list_presets()
    if not presets:
        print(f"no bundled models in {models_dir()}")
        return 0
    rows = [("NAME", "TASK", "SAMPLER", "STEPS", "SAMPLES", "DESCRIPTION")]
    rows += [(p["name"], p["task"], p["sampler"], str(p["steps"]), str(p["samples"]), p["description"])
             for p in presets]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + " ".join(row[-1].split()))
    return 0
