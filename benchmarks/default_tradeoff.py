"""How the demo card's default was chosen: samples x steps x ensemble views on the demo pair's val
rows, with the PSNR of the restored image, how well the aleatoric std and the sample spread rank
the 16 x 16 blocks' errors (Spearman; each map smoothed over 0, 2, 4 and 8 px, as
``uncertainty.predicted_error`` does), the gradient proxy's ranking, and the seconds of each run
(same process, one thread).

    PYTHONPATH=. python3 benchmarks/default_tradeoff.py [--json build/default_tradeoff.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from _common import header, load_demo, load_note, split_region
from napari_emdiffuse import evaluation as ev
from napari_emdiffuse.api import restore
from napari_emdiffuse.uncertainty import predicted_error

SETTINGS = [(1, 1, 1), (1, 1, 2), (1, 1, 4), (1, 1, 8), (2, 4, 4), (2, 4, 1), (2, 2, 4), (2, 1, 4), (4, 4, 4)]


def rankings(res, noisy, clean) -> dict:
    err = ev.block_rmse(res.mean, clean)
    out = {"psnr": round(ev.psnr(res.mean, clean), 3)}
    for sigma in (0, 2, 4, 8):
        for name, std, ale in (("aleatoric", None, res.aleatoric), ("spread", res.std, None)):
            if (ale if name == "aleatoric" else std) is None:
                continue
            pe = predicted_error(std, ale, {"weights": {name: 1.0}, "smoothing_px": sigma})
            out[f"{name}_{sigma}px"] = round(ev.spearman(ev.block_rms(pe), err), 3)
    out["gradient_of_input"] = round(ev.spearman(ev.gradient_proxy(noisy), err), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    noisy, clean, rows = split_region("val")
    model, source = load_demo(args.model)
    header(f"samples x steps x views on val rows {rows.start}-{rows.stop - 1}, {source}")
    table = []
    for samples, steps, ensemble in SETTINGS:
        t0 = time.perf_counter()
        res = restore(noisy, model, device="cpu", seed=0, samples=samples, steps=steps, ensemble=ensemble)
        row = {"samples": samples, "steps": steps, "ensemble": ensemble,
               "evaluations_per_tile": res.info["evaluations"] * samples + ensemble - 1,
               "seconds": round(time.perf_counter() - t0, 1), **rankings(res, noisy, clean)}
        table.append(row)
        print(json.dumps(row), flush=True)
    print(f"# after: {load_note()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": source, "rows": [rows.start, rows.stop], "table": table}, indent=1))


if __name__ == "__main__":
    main()
