"""Train, export and evaluate the bundled x2 super-resolution model on real ssTEM.

    python weights/train_superres.py train --steps 2500 --run build/superres-sstem-run
    python weights/export_run.py build/superres-sstem-run --name superres-sstem --command "..."
    python weights/train_superres.py evaluate --model superres-sstem --update-card

Training images: the bundled ssTEM crop (ISBI 2012, 30 sections, rows/columns 128-383, 4 nm pixels);
the low-resolution input is their 2x2 mean binning (what a scan with 8 nm pixels approximates).
Held out: weights/data/sstem_isbi2012_val.tif (rows 0-127 of every third section), never seen
in training; the figures in the card and in docs/benchmarks.md are measured there against
bicubic upsampling of the same binned input.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import yaml

from _time_budget import TimeBudget
from napari_emdiffuse.model import model_from_card
from napari_emdiffuse.sample_data import load_sstem
from napari_emdiffuse.tasks import superres as sr
from napari_emdiffuse.tasks.metrics import scores
from napari_emdiffuse.training.data import PatchPairs
from napari_emdiffuse.training.trainer import Trainer, TrainConfig, TrainUpdate

REPO = Path(__file__).resolve().parents[1]
VALIDATION = REPO / "weights" / "data" / "sstem_isbi2012_val.tif"
SCALE = 2

CARD = {
    "name": "superres-sstem",
    "task": "superres",
    "description": "x2 super-resolution of TEM/SEM sections (input: an image with twice the pixel size), "
                   "EMDiffuse-style conditional diffusion on the bicubic upsampling; trained on real ssTEM "
                   "of Drosophila VNC (ISBI 2012), demo size, CPU-trained.",
    "network": {"kind": "unet", "dims": 2, "in_channel": 2, "out_channel": 1, "inner_channel": 16,
                "channel_mults": [1, 2, 4, 4], "res_blocks": 1, "attn_res": [], "num_head_channels": 32,
                "norm_groups": 8, "dropout": 0.0, "aleatoric": True},
    "diffusion": {"parameterization": "x0", "clip": [-1.5, 1.5], "sigma_min": 0.002, "sigma_max": 80.0,
                  "sampler": "dpmpp_2m", "grid": "karras", "steps": 4, "samples": 2},
    "normalization": {"low": 0.1, "high": 99.9},
    "tile": {"size": 256, "overlap": 24},
    "superres": {"scale": SCALE, "degradation": "2x2 mean binning"},
}


def validation_stack() -> np.ndarray:
    return tifffile.imread(VALIDATION)


def train(args) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    cond, target = sr.training_pairs(load_sstem(), SCALE)
    vcond, vtarget = sr.training_pairs(validation_stack(), SCALE)
    data = PatchPairs(cond, target, patch=args.patch, intensity_jitter=0.05)
    val = PatchPairs(vcond, vtarget, patch=args.patch)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, warmup=100, ema_decay=0.998,
                      loss="l2", noise_draw="loguniform", seed=args.seed, device="cpu",
                      val_every=250, val_batch=16, checkpoint_every=250)
    card = dict(CARD, training={
        "data": "napari_emdiffuse/sample_data/sstem_isbi2012_crop.tif (30 x 256 x 256, all of it)",
        "degradation": "2x2 mean binning, then bicubic x2 upsampling as the condition",
        "validation": "weights/data/sstem_isbi2012_val.tif (10 x 128 x 512, disjoint rows)",
        "patch": args.patch, "intensity_jitter": 0.05})
    model = model_from_card(card)
    t0 = time.time()

    budget = TimeBudget(args.minutes)

    def report(u: TrainUpdate) -> None:
        budget(trainer, u.step)
        if u.val_loss is not None or u.step % 50 == 0:
            v = f" val_loss {u.val_loss:.4f} val_psnr1 {u.val_psnr:.2f}" if u.val_loss is not None else ""
            print(f"step {u.step}/{u.total} loss {u.loss:.4f} lr {u.lr:.2e} {u.seconds:.0f}s{v}", flush=True)

    trainer = Trainer(model, data, cfg, args.run, val_data=val, callback=report,
                      should_stop=lambda: trainer.step >= trainer.cfg.steps)  # the budget may shorten it
    if args.resume:
        trainer.resume()
    trainer.run()
    print(f"done in {time.time() - t0:.0f}s at step {trainer.step}")


def evaluate(args) -> dict:
    """PSNR / SSIM of the model and of bicubic on the held-out stack, in 8-bit intensity units."""
    from napari_emdiffuse.loading import load_model

    torch.set_num_threads(args.threads)
    hr = sr.crop_to_multiple(validation_stack().astype(np.float32), SCALE)
    lr = sr.bin_mean(hr, SCALE)
    model = load_model(args.model, task="superres")
    report = {"model": args.model, "data": "weights/data/sstem_isbi2012_val.tif, 10 x 128 x 512 at 4 nm; "
                                            "input: its 2x2 mean binning (10 x 64 x 256)",
              "bicubic": scores(sr.bicubic_baseline(lr, SCALE), hr, 255.0)}
    for steps, samples in [(None, None)] + [tuple(map(int, s.split("x"))) for s in args.also]:
        t0 = time.perf_counter()
        res = sr.superres(lr, model, device="cpu", seed=0, steps=steps, samples=samples)
        key = f"model_{res.info['steps']}steps_{res.info['samples']}samples"
        report[key] = {**scores(res.mean, hr, 255.0), "seconds": round(time.perf_counter() - t0, 1),
                       "sampler": res.info["sampler"]}
        report[key]["margin_over_bicubic_db"] = round(report[key]["psnr"] - report["bicubic"]["psnr"], 2)
        print(key, json.dumps(report[key]), flush=True)
    print("bicubic", json.dumps(report["bicubic"]))
    if args.update_card:
        path = REPO / "models" / f"{args.model}.yaml"
        card = yaml.safe_load(path.read_text())
        card["evaluation"] = report
        path.write_text(yaml.safe_dump(card, sort_keys=False))
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--steps", type=int, default=2500)
    t.add_argument("--minutes", type=float, default=0, help="fit the steps into this many minutes, measured after 40 steps (0: no limit)")
    t.add_argument("--run", default="build/superres-sstem-run")
    t.add_argument("--patch", type=int, default=64)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--resume", action="store_true")
    e = sub.add_parser("evaluate")
    e.add_argument("--model", default="superres-sstem")
    e.add_argument("--also", nargs="*", default=["1x1"], help="extra STEPSxSAMPLES settings to score")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--update-card", action="store_true")
    args = ap.parse_args()
    train(args) if args.cmd == "train" else evaluate(args)


if __name__ == "__main__":
    main()
