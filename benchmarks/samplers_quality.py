"""Quality against network evaluations on the validation rows (176-271) of the real SEM pair:
EMDiffuse's 1000-step ancestral DDPM against the fast samplers and noise grids at few steps.

    PYTHONPATH=. python3 benchmarks/samplers_quality.py [--columns 0:256] [--steps 1 2 3 4 5 10 20]

Every row is the mean of 2 samples (as EMDiffuse reports), seed 0, the demo model, tiles of 256
with overlap 32, fp32. The default crop is the validation rows' first 256 columns (96 x 256, one
tile); settings are compared on val, never on test (napari_emdiffuse/evaluation.py).
PSNR/SSIM as napari_emdiffuse/evaluation.py defines them (affine match to the 36 us image, peak 255); "PSNR 1" is a single
sample; "spread" is the mean per-pixel std between the two samples in grey levels (a sampler
that collapses to the blurred mean has none); "PSNR pm" is restore's posterior-mean estimate (the
denoiser at the first, noisiest level, averaged over the 2 starts). NFE = network evaluations per
sample. The DDPM-1000 row comes from build/bench/ when it was computed before for the same
weights and crop (recipe_vs_default.py shares it).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from _common import REPO, draw_samples, header, held_out, load_demo, load_note, psnr, quality, recipe_samples, span
from napari_emdiffuse.engine import Settings

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "heun", "heun_churn")


def configs(steps: list[int], grids: bool, samplers=SAMPLERS) -> list[tuple[str, dict]]:
    out = []
    for name in samplers:
        for n in steps:
            if name.startswith("heun") and n == 1:
                continue  # one Heun step is one Euler step: the 1-step rows of the others cover it
            out.append((f"{name} karras", dict(sampler=name, steps=n, grid="karras", rho=7.0)))
    if grids:  # the noise grid for the default solver
        for n in [s for s in steps if s <= 10]:
            out += [(f"dpmpp_2m karras rho=3", dict(sampler="dpmpp_2m", steps=n, grid="karras", rho=3.0)),
                    (f"dpmpp_2m loglinear", dict(sampler="dpmpp_2m", steps=n, grid="loglinear")),
                    (f"dpmpp_2m karras smax=10", dict(sampler="dpmpp_2m", steps=n, grid="karras", sigma_max=10.0)),
                    (f"dpmpp_2m karras smax=2", dict(sampler="dpmpp_2m", steps=n, grid="karras", sigma_max=2.0))]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--columns", default="0:256", help="column range of the validation rows, e.g. 0:256")
    ap.add_argument("--rows", default="176:272", help="rows (within the validation rows 176:272)")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 4, 5, 10, 20])
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    ap.add_argument("--no-grids", action="store_true", help="skip the noise-grid variants of dpmpp_2m")
    ap.add_argument("--no-recipe", action="store_true", help="skip the 1000-step DDPM row")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                    help="of the fast samplers' rows (the DDPM-1000 row: see _common.recipe_samples)")
    ap.add_argument("--model", default=None, help="model name or run folder (default: the demo model)")
    ap.add_argument("--out", default=str(REPO / "build" / "bench" / "samplers_quality.json"))
    args = ap.parse_args()
    noisy, clean = held_out(span(args.columns), span(args.rows))
    model, source = load_demo(args.model)
    header(f"quality vs network evaluations, {source}, val rows {args.rows} x columns {args.columns}")
    rows = []
    print(f"{'sampler / grid':28s} {'steps':>5s} {'NFE':>5s} {'PSNR':>7s} {'PSNR 1':>7s} {'SSIM':>6s} {'spread':>6s} "
          f"{'PSNR pm':>7s} {'s':>6s}")

    def report(label: str, steps: int, nfe: int, q: dict, seconds: float, note: str = "") -> None:
        rows.append(dict(label=label, steps=steps, nfe=nfe, seconds=seconds, **q))
        print(f"{label:28s} {steps:5d} {nfe:5d} {q['psnr']:7.2f} {q['psnr_one']:7.2f} {q['ssim']:6.3f} "
              f"{q['spread']:6.2f} {q.get('psnr_pm', float('nan')):7.2f} {seconds:6.1f}{note}", flush=True)

    if not args.no_recipe:
        samples, seconds, cached = recipe_samples(model, noisy)
        report("EMDiffuse DDPM 1000", 1000, 1000, quality(samples, clean), seconds,
               "  (cached)" if cached else "  (438 distinct levels evaluated, see recipe_sigmas)")
    for label, over in configs(args.steps, not args.no_grids, args.samplers):
        settings = Settings.for_model(model, torch.device("cpu"), samples=2, overlap=32, precision=args.precision, **over)
        samples, seconds, posterior_mean = draw_samples(model, noisy, settings)
        report(label, settings.steps, settings.evaluations, dict(quality(samples, clean), psnr_pm=psnr(posterior_mean, clean)),
               seconds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"source": source, "rows": args.rows, "columns": args.columns, "date": time.strftime("%Y-%m-%d %H:%M"),
                   "load": load_note(), "rows": rows}, f, indent=1)
    print(f"# after: {load_note()}; rows written to {args.out}")


if __name__ == "__main__":
    main()
