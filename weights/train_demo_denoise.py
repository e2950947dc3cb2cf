"""Train the bundled demo denoising model on the real SEM pair (4 us -> 36 us dwell).

    OMP_NUM_THREADS=1 nice -n 10 python weights/train_demo_denoise.py --cpu-minutes 90 --threads 1 \
        --precision bf16 --run build/demo-denoise-run

(with PYTHONPATH=.:weights). The defaults are the bundled model's recipe (base 24 channels, three
quarters of the noise draws at sigma_max). ``--cpu-minutes`` fits the cosine schedule into that
much CPU time of this process (``time.process_time``), so that runs on a shared machine, and the
peers compared with this model, get the same budget whatever else runs.

The pair's rows are split by :data:`napari_emdiffuse.evaluation.SPLITS`: training crops come from
the train rows only, validation (the loss curve here, checkpoint selection afterwards) from the
val rows; the test rows are never read. The condition gets extra Gaussian noise on half the
patches so the model holds up on faster scans than its training pair. EMA snapshots are kept
every ``--snapshot-every`` steps under RUN/snapshots/ for selection on val
(benchmarks/denoise_quality.py --select). Export to weights/ with weights/export_run.py.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from _gpu_budget import train_within
from _script import TimeBudget, initial_model
from napari_emdiffuse.evaluation import SPLITS, rows_of
from napari_emdiffuse.normalize import Normalizer
from napari_emdiffuse.sample_data import load_pair
from napari_emdiffuse.training.data import PatchPairs
from napari_emdiffuse.training import runs
from napari_emdiffuse.training.trainer import Trainer, TrainConfig, TrainUpdate

TRAIN_ROWS, VAL_ROWS = rows_of("demo-denoise", "train"), rows_of("demo-denoise", "val")

CARD = {
    "name": "demo-denoise",
    "task": "denoise",
    "description": "EMDiffuse-style conditional diffusion denoiser for SEM, trained on one real "
                   "4 us / 36 us dwell pair of mouse cortex (demo size, CPU-trained).",
    "network": {"kind": "unet", "dims": 2, "in_channel": 2, "out_channel": 1, "inner_channel": 24,
                "channel_mults": [1, 2, 4, 4], "res_blocks": 1, "attn_res": [], "num_head_channels": 32,
                "norm_groups": 8, "dropout": 0.0, "aleatoric": True},
    "diffusion": {"parameterization": "x0", "clip": [-1.5, 1.5], "sigma_min": 0.002, "sigma_max": 80.0,
                  "sampler": "dpmpp_2m", "grid": "karras", "steps": 4, "samples": 2},
    "normalization": {"low": 0.1, "high": 99.9},
    "tile": {"size": 256, "overlap": 24},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20000, help="at most this many steps")
    ap.add_argument("--cpu-minutes", type=float, default=0,
                    help="fit the steps into this many minutes of the process's CPU time (0: no limit)")
    ap.add_argument("--snapshot-every", type=int, default=500,
                    help="keep the EMA weights every this many steps under RUN/snapshots/ (0: none)")
    ap.add_argument("--run", default="build/demo-denoise-run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", metavar="MODEL",
                    help="start from these weights (e.g. demo-denoise): a fine-tune with a fresh optimiser")
    ap.add_argument("--noise-draw", default="loguniform_max:0.75",
                    help="noise levels drawn in training (napari_emdiffuse/training/noise.py)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--jitter", type=float, default=0.03, help="intensity jitter of the condition")
    ap.add_argument("--normalize-bin", type=int, default=2,
                    help="percentiles of bin x bin means (the card's normalization.bin)")
    ap.add_argument("--inner-channel", type=int, default=CARD["network"]["inner_channel"],
                    help="width of the network's first level")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="bf16: bf16 autocast on the CPU too (faster on CPUs with native bf16)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--gpu-budget", type=float, metavar="MINUTES",
                    help="train at the size these minutes afford on the GPU (up to the published EMDiffuse size), "
                         "with AMP, into --run (weights/_gpu_budget.py); on a machine without one, on the CPU")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # one thread is robust on a CPU shared with other jobs
    torch.manual_seed(args.seed)
    noisy, clean = load_pair()
    norm = {**CARD["normalization"], "bin": args.normalize_bin}
    cond = Normalizer.for_card(noisy, norm)(noisy)
    target = Normalizer.for_card(clean, norm)(clean)
    def pairs(rows, **kw):
        return PatchPairs(cond[None, None, rows], target[None, None, rows], patch=96, **kw)
    train = pairs(TRAIN_ROWS, extra_noise=0.2, intensity_jitter=args.jitter)
    val = pairs(VAL_ROWS)
    cfg = TrainConfig(steps=args.steps, batch_size=8, lr=args.lr, warmup=200, ema_decay=0.999,
                      loss="l2", noise_draw=args.noise_draw, seed=args.seed, device="cpu", precision=args.precision,
                      val_every=250, val_batch=16, checkpoint_every=250)
    def band(rows):
        return f"rows {rows.start}-{rows.stop - 1}"
    card = dict(CARD, training={"data": f"napari_emdiffuse/sample_data/pair53_*.tif {band(TRAIN_ROWS)}",
                                "validation": band(VAL_ROWS),
                                "test": f"{band(rows_of('demo-denoise', 'test'))} (never read in training)",
                                "split": SPLITS["demo-denoise"]["note"], "patch": 96, "extra_noise": 0.2,
                                "intensity_jitter": args.jitter})
    card["normalization"] = norm
    card["network"] = {**CARD["network"], "inner_channel": args.inner_channel}
    if args.gpu_budget:
        return train_within(card, train, val, args.gpu_budget, args.run, patch=96, noise_draw=args.noise_draw,
                            seed=args.seed)
    model = initial_model(card, args.init)

    def report(u: TrainUpdate) -> None:
        budget(trainer, u.step)
        if args.snapshot_every and u.step % args.snapshot_every == 0:
            snapshot = trainer.card()
            snapshot["training"]["cpu_seconds"] = round(budget.used(), 1)
            runs.save_model(snapshot, trainer.ema.network.state_dict(), Path(args.run) / "snapshots" / f"step{u.step:06d}")
        if u.val_loss is not None or u.step % 50 == 0:
            val = f" val_loss {u.val_loss:.4f} val_psnr1 {u.val_psnr:.2f}" if u.val_loss is not None else ""
            print(f"step {u.step}/{u.total} loss {u.loss:.4f} lr {u.lr:.2e} {u.seconds:.0f}s{val}", flush=True)

    trainer = Trainer(model, train, cfg, args.run, val_data=val, callback=report,
                      should_stop=lambda: trainer.step >= trainer.cfg.steps)  # the budget may shorten it
    if args.resume:
        trainer.resume()
    t0 = time.time()
    budget = TimeBudget(args.cpu_minutes, start_step=trainer.step, clock=time.process_time)
    trainer.run()
    cpu = budget.used()
    print(f"done in {time.time() - t0:.0f}s wall, {cpu:.0f}s CPU (process time, {torch.get_num_threads()} "
          f"thread(s)) at step {trainer.step}; {time.process_time():.0f}s CPU since the script started", flush=True)
    card = trainer.card()
    card["training"].update(cpu_seconds=round(cpu, 1), cpu_minutes_budget=args.cpu_minutes, threads=torch.get_num_threads())
    runs.save_model(card, trainer.ema.network.state_dict(), Path(args.run))


if __name__ == "__main__":
    main()
