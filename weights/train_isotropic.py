"""Train, export and evaluate the bundled isotropic-reconstruction model (z-factor 5) on real FIB-SEM.

    python weights/train_isotropic.py train --steps 2500 --run build/isotropic-fibsem-run
    python weights/export_run.py build/isotropic-fibsem-run --name isotropic-fibsem --command "..."
    python weights/train_isotropic.py evaluate --model isotropic-fibsem --update-card

Route: from an isotropic volume (vEMDiffuse-i). Training volume: weights/data/fibsem_flyem_train.tif
(FlyEM FIB-SEM, 10 nm isotropic, slices 0-89 of the cube); every plane a and a+5 condition the
four planes between them (in both directions along z). Held out: the bundled sample crop
napari_emdiffuse/sample_data/fibsem_flyem_crop.tif (slices 93-156 of the cube): its every fifth
slice (50 nm spacing) is reconstructed back to 10 nm and compared with the slices that were
left out, against linear interpolation along z.
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
from napari_emdiffuse.sample_data import load_fibsem
from napari_emdiffuse.tasks import isotropic as iso
from napari_emdiffuse.tasks.metrics import scores
from napari_emdiffuse.training.data import PatchPairs
from napari_emdiffuse.training.trainer import Trainer, TrainConfig, TrainUpdate

REPO = Path(__file__).resolve().parents[1]
TRAINING = REPO / "weights" / "data" / "fibsem_flyem_train.tif"
Z_FACTOR = 5

CARD = {
    "name": "isotropic-fibsem",
    "task": "isotropic",
    "description": "Isotropic reconstruction x5 along z (e.g. 50 nm sections to 10 nm), vEMDiffuse-style 2D "
                   "network with slice embedding; trained on real FIB-SEM of Drosophila medulla (FlyEM), "
                   "demo size, CPU-trained.",
    "network": {"kind": "unet", "dims": 2, "in_channel": 3, "out_channel": 1, "inner_channel": 16,
                "channel_mults": [1, 2, 4, 4], "res_blocks": 1, "attn_res": [], "num_head_channels": 32,
                "norm_groups": 8, "dropout": 0.0, "slice_embedding": True, "aleatoric": True},
    "diffusion": {"parameterization": "x0", "clip": [-1.5, 1.5], "sigma_min": 0.002, "sigma_max": 80.0,
                  "sampler": "dpmpp_2m", "grid": "karras", "steps": 4, "samples": 2},
    "normalization": {"low": 0.1, "high": 99.9},
    "tile": {"size": 256, "overlap": 24},
    "isotropic": {"z_factor": Z_FACTOR, "route": "isotropic", "slice_index": "0-based (k-1 for the slice at k/f)"},
}


def train(args) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    d = iso.training_data(tifffile.imread(TRAINING), Z_FACTOR)
    v = iso.training_data(load_fibsem(), Z_FACTOR, both_directions=False)
    data = PatchPairs(d["condition"], d["target"], patch=args.patch, intensity_jitter=0.05, slice_index=d["slice_index"])
    val = PatchPairs(v["condition"], v["target"], patch=args.patch, slice_index=v["slice_index"])
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, warmup=100, ema_decay=0.998,
                      loss="l2", noise_draw="loguniform", seed=args.seed, device="cpu",
                      val_every=250, val_batch=16, checkpoint_every=250)
    card = dict(CARD, training={
        "data": "weights/data/fibsem_flyem_train.tif (90 x 144 x 144, 10 nm), planes a, a+5 -> a+1..a+4, both directions",
        "validation": "napari_emdiffuse/sample_data/fibsem_flyem_crop.tif (64 x 128 x 128, disjoint slices)",
        "patch": args.patch, "intensity_jitter": 0.05})
    model = model_from_card(card)
    t0 = time.time()

    budget = TimeBudget(args.minutes)

    def report(u: TrainUpdate) -> None:
        budget(trainer, u.step)
        if u.val_loss is not None or u.step % 50 == 0:
            val_text = f" val_loss {u.val_loss:.4f} val_psnr1 {u.val_psnr:.2f}" if u.val_loss is not None else ""
            print(f"step {u.step}/{u.total} loss {u.loss:.4f} lr {u.lr:.2e} {u.seconds:.0f}s{val_text}", flush=True)

    trainer = Trainer(model, data, cfg, args.run, val_data=val, callback=report,
                      should_stop=lambda: trainer.step >= trainer.cfg.steps)  # the budget may shorten it
    if args.resume:
        trainer.resume()
    trainer.run()
    print(f"done in {time.time() - t0:.0f}s at step {trainer.step}")


def evaluate(args) -> dict:
    """PSNR / SSIM over the generated slices only (acquired ones are exact for both methods)."""
    from napari_emdiffuse.loading import load_model

    torch.set_num_threads(args.threads)
    truth = load_fibsem().astype(np.float32)
    n = (len(truth) - 1) // Z_FACTOR * Z_FACTOR + 1
    truth = truth[:n]
    acquired = truth[::Z_FACTOR]
    generated = np.ones(n, bool)
    generated[::Z_FACTOR] = False
    model = load_model(args.model, task="isotropic")
    linear = iso.linear_interpolation(acquired, Z_FACTOR)
    report = {"model": args.model,
              "data": f"napari_emdiffuse/sample_data/fibsem_flyem_crop.tif slices 0-{n - 1} (128 x 128, 10 nm); "
                      f"input: every {Z_FACTOR}th slice ({len(acquired)} slices, 50 nm); scored on the "
                      f"{int(generated.sum())} generated slices",
              "linear": scores(linear[generated], truth[generated], 255.0)}
    for steps, samples in [(None, None)] + [tuple(map(int, s.split("x"))) for s in args.also]:
        t0 = time.perf_counter()
        res = iso.reconstruct(acquired, model, device="cpu", seed=0, steps=steps, samples=samples)
        assert np.array_equal(res.mean[::Z_FACTOR], acquired)
        key = f"model_{res.info['steps']}steps_{res.info['samples']}samples"
        report[key] = {**scores(res.mean[generated], truth[generated], 255.0),
                       "seconds": round(time.perf_counter() - t0, 1), "sampler": res.info["sampler"]}
        report[key]["margin_over_linear_db"] = round(report[key]["psnr"] - report["linear"]["psnr"], 2)
        print(key, json.dumps(report[key]), flush=True)
    print("linear", json.dumps(report["linear"]))
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
    t.add_argument("--run", default="build/isotropic-fibsem-run")
    t.add_argument("--patch", type=int, default=64)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--resume", action="store_true")
    e = sub.add_parser("evaluate")
    e.add_argument("--model", default="isotropic-fibsem")
    e.add_argument("--also", nargs="*", default=["1x1"], help="extra STEPSxSAMPLES settings to score")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--update-card", action="store_true")
    args = ap.parse_args()
    train(args) if args.cmd == "train" else evaluate(args)


if __name__ == "__main__":
    main()
