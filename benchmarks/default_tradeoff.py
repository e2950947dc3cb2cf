"""How a card's default sampling settings were chosen, on the preset's validation region only (the
test region is for the reported figures and is never read here). Each setting is one run in the
same process, one thread, with its seconds.

* ``demo-denoise`` (the default): samples x steps x ensemble views on the demo pair's val rows,
  with the PSNR of the restored image, how well the aleatoric std and the sample spread rank the
  16 x 16 blocks' errors (Spearman; each map smoothed over 0, 2, 4 and 8 px, as
  ``uncertainty.predicted_error`` does) and the gradient proxy's ranking.
* ``superres-sstem`` / ``isotropic-fibsem``: samples x steps at the card's estimate and views, on
  the val region their training script's ``evaluate`` scores (``val_region()`` of
  weights/train_superres.py / train_isotropic.py), with PSNR / SSIM and the card's predicted-error
  map as the card states it: its Spearman and AUSE against the block errors, its calibration
  (measured / predicted block RMS overall and the range over deciles), its relative error and the
  fraction of blocks over the card's mask threshold (compare with the card's ``uncertainty``).

    PYTHONPATH=. python3 benchmarks/default_tradeoff.py [--preset PRESET] [--json build/default_tradeoff.json]
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import REPO, evaluations_per_tile, header, load_demo, load_note, split_region
from napari_emdiffuse import evaluation as ev
from napari_emdiffuse.api import restore
from napari_emdiffuse.uncertainty import calibration_for, predicted_error, relative_error

DEMO_SETTINGS = [(1, 1, 1), (1, 1, 2), (1, 1, 4), (1, 1, 8), (2, 4, 4), (2, 4, 1), (2, 2, 4), (2, 1, 4), (4, 4, 4)]
# (samples, steps) at the card's views: the task cards' map is the aleatoric head alone, so a
# second sample (and with one sample, any step after the first) may not change anything it shows.
TASK_SETTINGS = [(1, 4), (2, 4), (1, 2), (1, 8)]
# The training script that builds each task preset's val region (weights/).
TRAINING_SCRIPTS = {"superres-sstem": "train_superres", "isotropic-fibsem": "train_isotropic"}


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


def card_map_scores(res, region, card_uncertainty: dict) -> dict:
    """PSNR / SSIM of the scored part of ``region`` and the card's predicted-error map judged on it."""
    mean, reference = region.part(res.mean), region.part(region.reference)
    errors = ev.block_rmse(mean, reference)
    pe = predicted_error(region.part(res.std), region.part(res.aleatoric), calibration_for(card_uncertainty))
    predicted = ev.block_rms(pe)
    lo, hi = res.info["normalizer"]
    deciles = [d["ratio"] for d in ev.reliability(predicted, errors)]
    return {**ev.scores(mean, reference),
            "spearman": round(ev.spearman(predicted, errors), 3),
            "ause": round(ev.ause(predicted, errors), 4),
            "calibration": round(float(np.sqrt((errors ** 2).mean() / (predicted ** 2).mean())), 3),
            "decile_ratios": [min(deciles), max(deciles)],
            "relative_error": round(relative_error(pe, hi - lo), 4),
            # the card's threshold is in [-1, 1] units per block, as evaluation.calibrate_uncertainty fits it
            "flagged": round(float(np.mean(predicted * 2 / (hi - lo) > card_uncertainty["threshold"])), 3)}


def demo_table(model_source: str | None) -> tuple[dict, list]:
    noisy, clean, rows = split_region("val")
    model, source = load_demo(model_source)
    header(f"samples x steps x views on val rows {rows.start}-{rows.stop - 1}, {source}")
    table = []
    for samples, steps, ensemble in DEMO_SETTINGS:
        t0 = time.perf_counter()
        res = restore(noisy, model, device="cpu", seed=0, samples=samples, steps=steps, ensemble=ensemble)
        row = {"samples": samples, "steps": steps, "ensemble": ensemble, "evaluations_per_tile": evaluations_per_tile(res.info),
               "seconds": round(time.perf_counter() - t0, 1), **rankings(res, noisy, clean)}
        table.append(row)
        print(json.dumps(row), flush=True)
    return {"model": source, "rows": [rows.start, rows.stop]}, table


def task_table(preset: str, model_source: str | None) -> tuple[dict, list]:
    from napari_emdiffuse.loading import load_model

    sys.path.insert(0, str(REPO / "weights"))
    script = importlib.import_module(TRAINING_SCRIPTS[preset])
    region, task, source = script.val_region(), script.CARD["task"], model_source or preset
    model = load_model(source, task=task)
    card_uncertainty = model.card["uncertainty"]
    header(f"samples x steps at the card's views on the {preset} val region, {source}; card on val: "
           f"Spearman {card_uncertainty['validation']['spearman']}, relative error "
           f"{card_uncertainty['validated']['relative_error']['val']}, flagged {card_uncertainty['validation']['mask']['flagged']}")
    table = []
    for samples, steps in TASK_SETTINGS:
        t0 = time.perf_counter()
        res = restore(region.input, model, task=task, device="cpu", seed=0, samples=samples, steps=steps)
        row = {"samples": samples, "steps": steps, "ensemble": res.info.get("ensemble"),
               "evaluations_per_tile": evaluations_per_tile(res.info), "seconds": round(time.perf_counter() - t0, 1),
               **card_map_scores(res, region, card_uncertainty)}
        table.append(row)
        print(json.dumps(row), flush=True)
    return {"model": source, "region": "val"}, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo-denoise", choices=["demo-denoise", *TRAINING_SCRIPTS])
    ap.add_argument("--model", default=None, help="weights to score instead of the preset's (a run folder or card)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    about, table = demo_table(args.model) if args.preset == "demo-denoise" else task_table(args.preset, args.model)
    print(f"# after: {load_note()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"preset": args.preset, **about, "table": table}, indent=1))


if __name__ == "__main__":
    main()
