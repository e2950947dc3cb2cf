"""Side by side, one run, same machine, same weights, same image: the EMDiffuse recipe against
this project's default recipe, on the SEM pair's validation rows (176-271, 96 x 768 pixels;
napari_emdiffuse/evaluation.py: settings are compared on val, never on test).

    PYTHONPATH=. python3 benchmarks/recipe_vs_default.py [--timed-steps 50]

EMDiffuse recipe: ancestral DDPM over all 1000 levels of its linear 1e-4..0.09 test schedule
(clipped to the model's trained sigma range, see _common.recipe_sigmas), mean of 2 samples,
256-pixel tiles at stride 224 one at a time (batch 1), fp32, NCHW. Its wall time is measured on
the last ``--timed-steps`` of the 1000 steps (a network evaluation costs the same at any noise
level) and scaled to 1000. Its quality comes from a full run (cached in build/bench/).
Both are timed on the whole validation band (96 x 768) and compared for quality on its first
256 columns (the 1000-step run costs four times as much on the whole region).
Default recipe: ``restore(image, model)`` with the model card's settings, end to end.
Also printed: network evaluations per second of a 256x256 tile and the fraction of the
device's peak, from the network's counted FLOPs.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import (count_flops, device_peak, draw_samples, forward_seconds, grid_settings, header, held_out,
                     load_demo, load_note, precision_note, psnr, quality, recipe_samples, recipe_sigmas, span, ssim)
from napari_emdiffuse.engine import Settings
from napari_emdiffuse.api import restore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timed-steps", type=int, default=20, help="steps of the 1000-step recipe that are timed")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of the default recipe (fastest kept)")
    ap.add_argument("--model", default=None, help="model name or run folder (default: the demo model)")
    ap.add_argument("--columns", default="0:256", help="validation columns for the quality comparison")
    ap.add_argument("--rows", default="176:272", help="validation rows for the quality comparison")
    ap.add_argument("--time-columns", default="0:768", help="validation columns for the timing")
    args = ap.parse_args()
    noisy_t, _ = held_out(span(args.time_columns))
    noisy, clean = held_out(span(args.columns), span(args.rows))
    model, source = load_demo(args.model)
    cpu = torch.device("cpu")
    header(f"EMDiffuse recipe vs default recipe, {source}; timed on val rows {noisy_t.shape[0]}x{noisy_t.shape[1]}, "
           f"quality on val {noisy.shape[0]}x{noisy.shape[1]} (rows {args.rows}, columns {args.columns})")

    # The project's default, end to end (a short warm-up call first builds the oneDNN kernels).
    restore(noisy[:, :256], model, steps=1, samples=1, device="cpu")
    default_s, info = float("inf"), {}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        info = restore(noisy_t, model, device="cpu").info
        default_s = min(default_s, time.perf_counter() - t0)
    result = restore(noisy, model, device="cpu")
    default_q = {"psnr": psnr(result.mean, clean), "ssim": ssim(result.mean, clean)}
    print(f"default: {info['sampler']} {info['steps']} steps ({info['evaluations']} evaluations) x {info['samples']} "
          f"samples, tile {info['tile']} batch {info['batch_size']}, {precision_note(model)}: "
          f"{default_s:.2f} s", flush=True)

    # The recipe's wall time on a fixed fraction of its steps.
    d = model.diffusion
    full = recipe_sigmas(float(d["sigma_min"]), float(d["sigma_max"]))
    base = Settings.for_model(model, cpu, sampler="ddpm", samples=2, overlap=32, batch_size=1, precision="fp32")
    part = grid_settings(base, full[-(args.timed_steps + 1):])
    _, part_s, _ = draw_samples(model, noisy_t, part, layout="contiguous")
    recipe_s = part_s * (len(full) - 1) / args.timed_steps
    print(f"recipe: {args.timed_steps} of {len(full) - 1} ancestral steps x 2 samples, batch 1, fp32 NCHW: "
          f"{part_s:.1f} s, scaled to {recipe_s:.0f} s", flush=True)

    samples, run_s, cached = recipe_samples(model, noisy)
    recipe_q = quality(samples, clean)
    recipe_mean = samples.mean(axis=0)
    recipe_q.update(psnr=psnr(recipe_mean, clean), ssim=ssim(recipe_mean, clean))
    print(f"recipe quality from a full run ({'cached' if cached else f'{run_s:.0f} s'}; repeated levels skipped, "
          "bf16 autocast, see _common.recipe_samples)")

    ratio = recipe_s / default_s
    dpsnr = default_q["psnr"] - recipe_q["psnr"]
    print(f"\n{'':22s} {'seconds':>9s} {'PSNR':>7s} {'SSIM':>6s}")
    print(f"{'EMDiffuse recipe':22s} {recipe_s:9.1f} {recipe_q['psnr']:7.2f} {recipe_q['ssim']:6.3f}")
    print(f"{'default recipe':22s} {default_s:9.2f} {default_q['psnr']:7.2f} {default_q['ssim']:6.3f}")
    print(f"wall-time ratio {ratio:.0f}x (target >= 100x); PSNR difference {dpsnr:+.2f} dB (target >= -0.2 dB): "
          f"{'PASS' if ratio >= 100 and dpsnr >= -0.2 else 'FAIL'}")

    # Against the hardware: the default's network rate on 256x256 tiles.
    net = model.network
    flops = count_flops(net, torch.randn(1, net.in_channel, 256, 256), torch.full((1,), 0.5))
    batch = info["batch_size"]
    sec, _ = forward_seconds(net, batch, channels_last=True, dtype=None)
    rate = flops * batch / sec
    peak = device_peak(cpu, None)
    print(f"network: {flops / 1e9:.1f} GFLOP per 256x256 tile; {batch / sec:.2f} evaluations/s at batch {batch} "
          f"= {rate / 1e9:.1f} GFLOP/s, {100 * rate / peak:.0f}% of the measured fp32 matmul peak "
          f"({peak / 1e9:.0f} GFLOP/s)")
    print(f"# after: {load_note()}")


if __name__ == "__main__":
    main()
