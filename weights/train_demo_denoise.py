"""Train the bundled demo denoising model on the real SEM pair (4 us -> 36 us dwell).

    PYTHONPATH=.:weights python weights/train_demo_denoise.py --steps 20000 --threads 2 --precision bf16 --run build/demo-denoise-run

The defaults are the bundled model's recipe (base 24 channels, three quarters of the noise
draws at sigma_max); the bundled run reached step 20,000 in two stages (its card has the commands).

Rows 576-767 of the pair are held out (validation and every reported figure); training crops come
from rows 0-559. The condition gets extra Gaussian noise on half the patches so the model holds up
on faster scans than its training pair. Export to weights/ with weights/export_run.py.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _script import initial_model
from napari_emdiffuse.normalize import Normalizer
from napari_emdiffuse.sample_data import load_pair
from napari_emdiffuse.training.data import PatchPairs
from napari_emdiffuse.training.trainer import Trainer, TrainConfig, TrainUpdate

TRAIN_ROWS, VAL_ROWS = slice(0, 560), slice(576, 768)

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
    ap.add_argument("--steps", type=int, default=20000)
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
    card = dict(CARD, training={"data": "napari_emdiffuse/sample_data/pair53_*.tif rows 0-559",
                                "validation": "rows 576-767", "patch": 96, "extra_noise": 0.2,
                                "intensity_jitter": args.jitter})
    card["normalization"] = norm
    card["network"] = {**CARD["network"], "inner_channel": args.inner_channel}
    model = initial_model(card, args.init)

    def report(u: TrainUpdate) -> None:
        if u.val_loss is not None or u.step % 50 == 0:
            val = f" val_loss {u.val_loss:.4f} val_psnr1 {u.val_psnr:.2f}" if u.val_loss is not None else ""
            print(f"step {u.step}/{u.total} loss {u.loss:.4f} lr {u.lr:.2e} {u.seconds:.0f}s{val}", flush=True)

    trainer = Trainer(model, train, cfg, args.run, val_data=val, callback=report)
    if args.resume:
        trainer.resume()
    t0 = time.time()
    trainer.run()
    print(f"done in {time.time() - t0:.0f}s at step {trainer.step}")


if __name__ == "__main__":
    main()
