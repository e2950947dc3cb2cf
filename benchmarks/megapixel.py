"""Seconds per megapixel, end to end, for the demo model at its default settings:
``restore(image, "demo-denoise")`` on the real 768 x 768 SEM image (4 us dwell), and on larger
mirrored mosaics of it, where the tiles' overlap costs less.

    PYTHONPATH=. python3 benchmarks/megapixel.py [--sizes 768 1536] [--repeats 2] [--precision auto fp32]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _common import header, load_demo, load_note, machine, precision_note, sync
from napari_emdiffuse.engine import Settings
from napari_emdiffuse.api import restore
from napari_emdiffuse.sample_data import load_pair
from napari_emdiffuse.tiling import TileGrid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[768, 1536])
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per size (fastest kept)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="model name or run folder (default: the demo model)")
    ap.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16"],
                    help="inference precisions to time (auto: the card's, bf16 on CUDA and CPUs with native bf16)")
    ap.add_argument("--json", type=Path, help="write every row here")
    args = ap.parse_args()
    model, source = load_demo(args.model)
    noisy, _ = load_pair()
    header(f"seconds per megapixel, {source}, default settings")
    restore(noisy[:256, :256], model, steps=1, samples=1, device=args.device)  # warm-up
    print(f"{'image':>11s} {'precision':>9s} {'MP':>6s} {'tiles':>5s} {'evaluated':>9s} {'seconds':>8s} {'s/MP':>7s}")
    rows, info = [], {}
    for precision in args.precision:
        for size in args.sizes:
            reps = -(-size // noisy.shape[0])
            image = np.pad(noisy, [(0, (reps - 1) * noisy.shape[0])] * 2, mode="symmetric")[:size, :size]
            best = float("inf")
            for _ in range(args.repeats):
                sync()
                t0 = time.perf_counter()
                info = restore(image, model, device=args.device, precision=precision).info
                sync()
                best = min(best, time.perf_counter() - t0)
            settings = Settings.for_model(model, torch.device(args.device))
            grid = TileGrid.plan(image.shape, settings.tile, settings.overlap, model.network.downsample_factor)
            mp = image.size / 1e6
            print(f"{size:5d}x{size:<5d} {precision:>9s} {mp:6.2f} {len(grid.windows()):5d} {grid.evaluated_fraction:8.2f}x "
                  f"{best:8.2f} {best / mp:7.2f}", flush=True)
            rows.append({"size": size, "precision": precision, "megapixels": mp, "tiles": len(grid.windows()),
                         "seconds": best, "s_per_mp": best / mp, "batch_size": info.get("batch_size")})
    print(f"settings: {info.get('sampler')} {info.get('steps')} steps, {info.get('evaluations')} evaluations x "
          f"{info.get('samples')} samples, ensemble {info.get('ensemble')}, tile {info.get('tile')} batch "
          f"{info.get('batch_size')}, device {info.get('device')}, {precision_note(model)}")
    print(f"# after: {load_note()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "model": source, "device": args.device, "rows": rows,
                                         "settings": {k: info.get(k) for k in ("sampler", "steps", "evaluations",
                                                                               "samples", "ensemble", "tile")}}, indent=1))


if __name__ == "__main__":
    main()
