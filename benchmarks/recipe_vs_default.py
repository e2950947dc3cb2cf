"""The EMDiffuse recipe against this project's default, side by side in one run: same machine,
same weights, same image, same load. Prints the wall-time ratio, the PSNR difference and how well
each one's uncertainty ranks its own block errors, each with a 95% interval, and PASS / FAIL
against issue 18's marks (>= 300x; at most 0.2 dB below the recipe; an uncertainty map that
ranks the blocks no worse than the recipe's two samples do).

    PYTHONPATH=. python3 benchmarks/recipe_vs_default.py                  # val rows: choosing settings
    PYTHONPATH=. python3 benchmarks/recipe_vs_default.py --split test     # the reported figure, once
    PYTHONPATH=. python3 benchmarks/recipe_vs_default.py --device cuda    # on a GPU

Region: the demo pair's ``val`` rows (176-271) or ``test`` rows (0-159), all 768 columns
(napari_emdiffuse/evaluation.py SPLITS; the current bundled model predates that split, see
docs/benchmarks.md).

EMDiffuse recipe: ancestral DDPM over all 1000 levels of its linear 1e-4..0.09 test schedule
(clipped to the model's trained sigma range, _common.recipe_sigmas), mean of 2 samples, 256-pixel
tiles at stride 224 one at a time (batch 1), fp32, NCHW; its uncertainty is the per-pixel std of
the 2 samples. Its wall time: the last ``--timed-steps`` of its 1000 steps on the whole region,
scaled to 1000 (a network evaluation costs the same at every noise level). Its quality: a full
run (cached in build/bench/; on a CPU in bf16 tile batches, see _common.recipe_samples).

Default: ``restore(image, model)`` with the model card's settings, end to end (normalisation,
noise, tiling, ensemble, uncertainty; what the CLI does without start-up and file I/O); its
uncertainty map is ``uncertainty.predicted_error`` with the card's calibration.

The two are timed in alternating rounds (``--rounds``) so that a shared machine's load hits both
alike; each round gives a ratio, and the median is reported with the range. Also printed: network
evaluations per second of a 256x256 tile at the default's batch and the fraction of the device's
peak, from the network's counted FLOPs. ``--json`` writes every figure.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _common import (count_flops, device_peak, draw_samples, evaluations_per_tile, forward_seconds, grid_settings,
                     header, load_demo, load_note, machine, precision_note, recipe_samples, recipe_settings, span, split_region, sync)
from napari_emdiffuse import evaluation as ev
from napari_emdiffuse.device import resolve_device
from napari_emdiffuse.api import restore
from napari_emdiffuse.uncertainty import calibration_for, gaussian_smooth, predicted_error

TARGET_RATIO, PSNR_SLACK_DB = 300.0, 0.2


def quality(model, noisy, clean, device, recipe_precision: str, precision: str | None = None) -> dict:
    """PSNR and uncertainty ranking of both recipes on the region."""
    result = restore(noisy, model, device=device, seed=0, precision=precision)
    samples, run_s, cached = recipe_samples(model, noisy, precision=recipe_precision, device=device)
    recipe_mean = samples.mean(axis=0)
    recipe_std = samples.std(axis=0, ddof=1)
    calibration = calibration_for(model.uncertainty)
    default_map = predicted_error(result.std, result.aleatoric, calibration)
    if default_map is None:
        raise SystemExit("the default gives no uncertainty map (no aleatoric head and one sample): nothing to compare")
    err_d, err_r = ev.block_rmse(result.mean, clean), ev.block_rmse(recipe_mean, clean)
    pred_d, pred_r = ev.block_rms(default_map), ev.block_rms(recipe_std)
    smoothing = float(calibration.get("smoothing_px", 0.0))
    pred_r_smooth = ev.block_rms(np.sqrt(gaussian_smooth(recipe_std ** 2, smoothing)))
    out = {
        "default": {"psnr": round(ev.psnr(result.mean, clean), 3), "ssim": round(ev.ssim(result.mean, clean), 4),
                    "settings": {k: result.info[k] for k in ("sampler", "steps", "samples", "estimate", "ensemble",
                                                             "evaluations", "tile", "batch_size")},
                    "evaluations_per_tile": evaluations_per_tile(result.info),
                    "uncertainty": "predicted_error, card calibration" if "predicted_error" in (model.uncertainty or {})
                    else "predicted_error, uncalibrated (the card states no calibration)",
                    "calibration": calibration,
                    **ev.judge_uncertainty(pred_d, err_d, ev.gradient_proxy(noisy))},
        "recipe": {"psnr": round(ev.psnr(recipe_mean, clean), 3), "ssim": round(ev.ssim(recipe_mean, clean), 4),
                   "evaluations_per_tile": 2 * 1000, "quality_run": "cached" if cached else f"{run_s:.0f} s",
                   "quality_precision": recipe_precision,
                   "spearman_std_smoothed_like_the_default": round(ev.spearman(pred_r_smooth, err_r), 3),
                   **ev.judge_uncertainty(pred_r, err_r, ev.gradient_proxy(noisy))},
        "psnr_margin": ev.psnr_margin(result.mean, recipe_mean, clean),
        "spearman_gap": ev.spearman_gap(pred_d, err_d, pred_r, err_r),
        "blocks": int(len(err_d)),
    }
    for side in ("default", "recipe"):
        out[side].pop("reliability", None)  # uncalibrated scales: the ranking is what is compared
    return out


def parse_also(text: str) -> dict:
    """``samples=2,steps=4`` -> restore() keyword arguments."""
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        out[key.strip()] = value if key.strip() in ("sampler", "estimate", "precision") else int(value)
    return out


def timing(model, noisy, device, rounds: int, timed_steps: int, precision: str | None = None,
           also: list[str] = ()) -> dict:
    """Alternating rounds: the default end to end (and each ``also`` setting), then the recipe's
    last ``timed_steps`` steps (fp32, batch 1, NCHW) scaled to its 1000."""
    restore(noisy, model, device=device, steps=1, samples=1, ensemble=1)  # warm-up: kernels, caches
    full = recipe_settings(model, device, "fp32")
    part = grid_settings(full, full.sigmas()[-(timed_steps + 1):])
    draw_samples(model, noisy, grid_settings(full, full.sigmas()[-2:]), layout="contiguous", device=device)
    rows = []
    for r in range(rounds):
        sync()
        t0 = time.perf_counter()
        restore(noisy, model, device=device, seed=0, precision=precision)
        sync()
        default_s = time.perf_counter() - t0
        others = {}
        for text in also:
            sync()
            t1 = time.perf_counter()
            restore(noisy, model, device=device, seed=0, **{"precision": precision, **parse_also(text)})
            sync()
            others[text] = time.perf_counter() - t1
        _, part_s, _ = draw_samples(model, noisy, part, layout="contiguous", device=device)
        recipe_s = part_s * full.steps / timed_steps
        rows.append({"default_s": round(default_s, 3), "recipe_s": round(recipe_s, 1),
                     "ratio": round(recipe_s / default_s, 1), "load": load_note(),
                     "also": {k: {"s": round(v, 3), "ratio": round(recipe_s / v, 1)} for k, v in others.items()}})
        for k, v in others.items():
            print(f"         {k}: {v:.2f} s, ratio {recipe_s / v:.0f}x", flush=True)
        print(f"round {r + 1}: default {default_s:.2f} s, recipe {part_s:.1f} s for {timed_steps} of {full.steps} "
              f"steps = {recipe_s:.0f} s; ratio {recipe_s / default_s:.0f}x ({load_note()})", flush=True)
    ratios = [r["ratio"] for r in rows]
    out = {"rounds": rows, "ratio": round(float(np.median(ratios)), 1), "ratio_range": [min(ratios), max(ratios)],
           "timed_steps": timed_steps, "recipe_steps": full.steps}
    out["also"] = {k: round(float(np.median([r["also"][k]["ratio"] for r in rows])), 1) for k in also}
    return out


def network_rate(model, device, batch: int, precision: str | None = None) -> dict:
    """The default's network on 256x256 tiles at its batch and precision: evaluations per second
    and the fraction of the device's peak (counted FLOPs)."""
    from napari_emdiffuse.device import cpu_has_native_bf16

    net = model.network.to(device)
    flops = count_flops(net, torch.randn(1, net.in_channel, 256, 256, device=device),
                        torch.full((1,), 0.5, device=device))
    bf16 = precision == "bf16" or (precision in (None, "auto") and (device.type == "cuda" or cpu_has_native_bf16()))
    dtype = torch.bfloat16 if bf16 else None
    sec, _ = forward_seconds(net, batch, channels_last=True, dtype=dtype)
    rate = flops * batch / sec
    peak = device_peak(device, dtype)
    return {"gflop_per_tile": round(flops / 1e9, 2), "batch": batch, "precision": "bf16" if bf16 else "fp32",
            "evaluations_per_s": round(batch / sec, 2), "gflop_per_s": round(rate / 1e9, 1),
            "peak_gflop_per_s": round(peak / 1e9, 1) if peak else None,
            "fraction_of_peak": round(rate / peak, 4) if peak else None,
            "peak_is": "the card's dense bf16 data-sheet figure" if device.type == "cuda"
            else "the measured 2048^2 matmul rate in the same dtype"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=["val", "test"], default="val",
                    help="val: where settings are chosen; test: the reported figure, once")
    ap.add_argument("--timed-steps", type=int, default=10, help="steps of the recipe's 1000 that are timed each round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (the median ratio is reported)")
    ap.add_argument("--model", default=None, help="model name or run folder (default: the demo model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: steadiest on a shared machine; the ratio is what is compared)")
    ap.add_argument("--recipe-precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="of the recipe's quality run (auto: bf16 on the CPU, where fp32 takes hours; fp32 on a GPU)")
    ap.add_argument("--columns", default="0:768", help="columns of the region (a narrower crop for smoke tests)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                    help="the default's inference precision (default: the card's, auto)")
    ap.add_argument("--also", nargs="*", default=[], metavar="SETTINGS",
                    help="other settings timed in the same rounds, e.g. samples=2,steps=4 (the previous default)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    noisy, clean, rows = split_region(args.split)
    noisy, clean = noisy[:, span(args.columns)], clean[:, span(args.columns)]
    model, source = load_demo(args.model)
    header(f"EMDiffuse recipe vs default, {source}, on {device}; {args.split} rows {rows.start}-{rows.stop - 1} "
           f"({noisy.shape[0]} x {noisy.shape[1]}), {args.threads} thread(s)")
    recipe_precision = args.recipe_precision if args.recipe_precision != "auto" else (
        "fp32" if device.type == "cuda" else "bf16")

    default_precision = (f"precision {args.precision}" if args.precision else
                         precision_note(model) if device.type == "cpu" else "precision auto (bf16 on CUDA)")
    q = quality(model, noisy, clean, device, recipe_precision, args.precision)
    d, r = q["default"], q["recipe"]
    print(f"default: {d['settings']['sampler']}, {d['settings']['samples']} sample(s) x {d['settings']['steps']} step(s), "
          f"{d['settings']['estimate']} over {d['settings']['ensemble']} view(s): {d['evaluations_per_tile']} evaluations "
          f"per tile; batch {d['settings']['batch_size']}, {default_precision}; "
          f"uncertainty: {d['uncertainty']}", flush=True)
    print(f"recipe: ancestral DDPM, 1000 steps x 2 samples = 2000 evaluations per tile, batch 1, fp32 NCHW; "
          f"uncertainty: std of the 2 samples (quality run {r['quality_run']}, {recipe_precision})", flush=True)

    t = timing(model, noisy, device, args.rounds, args.timed_steps, args.precision, args.also)
    rate = network_rate(model, device, d["settings"]["batch_size"], args.precision)

    margin, gap = q["psnr_margin"], q["spearman_gap"]
    print(f"\n{'':18s} {'seconds':>9s} {'PSNR':>7s} {'SSIM':>6s} {'Spearman':>9s} {'AUSE':>7s}  (16x16 blocks: {q['blocks']})")
    median = t["rounds"][int(np.argsort([x["ratio"] for x in t["rounds"]])[len(t["rounds"]) // 2])]
    print(f"{'EMDiffuse recipe':18s} {median['recipe_s']:9.1f} {r['psnr']:7.2f} {r['ssim']:6.3f} {r['spearman']:9.3f} "
          f"{r['ause']:7.4f}  (std smoothed like the default's map: Spearman {r['spearman_std_smoothed_like_the_default']:.3f})")
    print(f"{'default':18s} {median['default_s']:9.2f} {d['psnr']:7.2f} {d['ssim']:6.3f} {d['spearman']:9.3f} "
          f"{d['ause']:7.4f}  (gradient of the input: Spearman {d['spearman_proxy']:.3f})")
    ok_ratio = t["ratio"] >= TARGET_RATIO
    ok_psnr = margin["margin_db"] >= -PSNR_SLACK_DB
    ok_rank = gap["gap"] >= 0
    print(f"wall-time ratio {t['ratio']:.0f}x (median of {len(t['rounds'])} rounds, range {t['ratio_range'][0]:.0f}-"
          f"{t['ratio_range'][1]:.0f}x; target >= {TARGET_RATIO:.0f}x): {'PASS' if ok_ratio else 'FAIL'}")
    for k, v in t["also"].items():
        print(f"  ({k}: {v:.0f}x)")
    print(f"PSNR difference {margin['margin_db']:+.3f} dB, 95% interval [{margin['ci95'][0]:+.3f}, {margin['ci95'][1]:+.3f}] "
          f"(target >= -{PSNR_SLACK_DB} dB): {'PASS' if ok_psnr else 'FAIL'}")
    print(f"Spearman difference {gap['gap']:+.3f}, 95% interval [{gap['ci95'][0]:+.3f}, {gap['ci95'][1]:+.3f}] "
          f"(target >= 0: ranks no worse than the recipe's samples): {'PASS' if ok_rank else 'FAIL'}")
    print(f"overall: {'PASS' if ok_ratio and ok_psnr and ok_rank else 'FAIL'}")
    print(f"network: {rate['gflop_per_tile']:.1f} GFLOP per 256x256 tile; {rate['evaluations_per_s']:.2f} evaluations/s "
          f"at batch {rate['batch']} ({rate['precision']}) = {rate['gflop_per_s']:.1f} GFLOP/s"
          + (f", {100 * rate['fraction_of_peak']:.1f}% of {rate['peak_is']} ({rate['peak_gflop_per_s']:.0f} GFLOP/s)"
             if rate["fraction_of_peak"] else ""))
    print(f"# after: {load_note()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "model": source, "device": str(device),
                                         "split": args.split, "rows": [rows.start, rows.stop], "columns": args.columns,
                                         "threads": args.threads, "precision": default_precision,
                                         "quality": q, "timing": t, "network": rate,
                                         "pass": {"ratio": ok_ratio, "psnr": ok_psnr, "ranking": ok_rank}}, indent=1))


if __name__ == "__main__":
    main()
