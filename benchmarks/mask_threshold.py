"""The demo model's reliability-mask threshold for the map the engine masks at the card's settings
(``engine.skeleton.summarize``: the sample std with 2 or more samples, else the aleatoric std),
chosen on the demo pair's val rows by the protocol's rule (``evaluation.mask_threshold``: the
fewest 16 x 16 blocks that hold at least half of the worst 10%, at most 15% flagged), in the
model's [-1, 1] units.

    PYTHONPATH=. python3 benchmarks/mask_threshold.py [--model demo-denoise] [--update-card]

Run it after changing the card's samples: a threshold fitted to one map means nothing for the other.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from _common import REPO, load_demo, split_region
from napari_emdiffuse import evaluation as ev
from napari_emdiffuse.restore import restore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--update-card", action="store_true", help="write it into models/demo-denoise.yaml")
    args = ap.parse_args()
    torch.set_num_threads(1)
    noisy, clean, rows = split_region("val")
    model, source = load_demo(args.model)
    res = restore(noisy, model, device="cpu", seed=0)
    basis, quantity = (res.std, "std of samples") if res.std is not None else (res.aleatoric, "aleatoric std")
    lo, hi = res.info["normalizer"]
    errors = ev.block_rmse(res.mean, clean)
    got = ev.mask_threshold(ev.block_rms(basis), errors)
    threshold = round(got["threshold"] * 2 / (hi - lo), 5)
    flagged = float((basis * 2 / (hi - lo) > threshold).mean())
    report = {"model": source, "quantity": quantity, "threshold": threshold, "flagged_pixel_fraction": round(flagged, 3),
              "region": f"val rows {rows.start}-{rows.stop - 1}", **{k: v for k, v in got.items() if k != "threshold"}}
    print(json.dumps(report))
    if args.update_card:
        path = REPO / "models" / "demo-denoise.yaml"
        card = yaml.safe_load(path.read_text())
        unc = card["uncertainty"]
        for stale in ("calibration_scale", "spearman_block_std_vs_error", "spearman_gradient_proxy_vs_error",
                      "rmse_flagged_blocks", "rmse_other_blocks"):
            unc.pop(stale, None)  # figures of the map it replaces
        unc.update(threshold=threshold, quantity=quantity, flagged_block_fraction=got["flagged"],
                   calibrated_on=f"demo pair {report['region']}, 16 x 16 blocks (benchmarks/mask_threshold.py)")
        path.write_text(yaml.safe_dump(card, sort_keys=False))
        print("updated", path)


if __name__ == "__main__":
    main()
