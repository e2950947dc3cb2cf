"""What a BioImage Model Zoo export of each bundled preset gives, against napari-emdiffuse's own
restoration with the card's settings and the simple baseline, on the data the cards' evaluations use.

    python benchmarks/export_quality.py [--presets demo-denoise superres-sstem isotropic-fibsem]

The export computes the single-pass posterior mean (one view, one noise start, one tile), so it
gives up the card's rotation/flip ensemble. Data: the val regions of the evaluation protocol (this
compares settings): demo-denoise val rows 176-271 of the real SEM pair (the 36 us image is the
reference); superres-sstem weights/data/sstem_isbi2012_val.tif and its 2x2 binning; isotropic-fibsem every 5th slice of slices 0-60 of the FlyEM sample crop, scored on the
48 generated slices. PSNR/SSIM: napari_emdiffuse.evaluation (affine intensity match, peak 255).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_emdiffuse import evaluation, sample_data
from napari_emdiffuse.interchange.bioimageio_export import build_network, plan_export
from napari_emdiffuse.loading import load_model
from napari_emdiffuse.api import restore
from napari_emdiffuse.results import sampling_summary
from napari_emdiffuse.tasks.isotropic import linear_interpolation
from napari_emdiffuse.tasks.superres import bicubic_baseline, bin_mean

REPO = Path(__file__).resolve().parents[1]


def task_data(preset: str):
    """(input, reference, baseline name, baseline, scored part of the output)."""
    if preset == "demo-denoise":
        noisy, clean = (a[evaluation.rows_of(preset, "val")] for a in sample_data.load_pair())
        return noisy, clean, "noisy input", noisy, np.s_[...]
    if preset == "superres-sstem":
        high = tifffile.imread(REPO / "weights/data/sstem_isbi2012_val.tif")
        low = bin_mean(high, 2)
        return low, high, "bicubic", bicubic_baseline(low, 2, dtype=high.dtype), np.s_[...]
    volume = sample_data.load_fibsem()[:61]
    acquired = volume[::5]
    generated = np.ones(len(volume), bool)
    generated[::5] = False
    return acquired, volume, "linear interpolation", linear_interpolation(acquired, 5), generated


def exported(model, image) -> np.ndarray:
    """The export's network on the input: a volume at once; a stack plane by plane, each plane
    normalised on its own (napari-emdiffuse normalises a stack as a whole)."""
    network = build_network(plan_export(model, license="MIT"))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32))
    with torch.no_grad():
        if model.task == "isotropic":
            return network(x[None, None])[0, 0].numpy()
        planes = np.stack([network(p[None, None])[0, 0].numpy() for p in (x if x.ndim == 3 else x[None])])
    return planes if x.ndim == 3 else planes[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["demo-denoise", "superres-sstem", "isotropic-fibsem"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for preset in args.presets:
        model = load_model(preset)
        image, reference, baseline_name, baseline, part = task_data(preset)
        t0 = time.perf_counter()
        restored = restore(image, model, device="cpu")
        full = restored.mean
        t1 = time.perf_counter()
        single = exported(model, image)
        t2 = time.perf_counter()
        how = f"{sampling_summary(restored.info)}, {restored.info['estimate']}, ensemble {restored.info['ensemble']}"
        for name, result, seconds in ((baseline_name, baseline, None),
                                      (f"napari-emdiffuse, card settings ({how})", full, t1 - t0),
                                      ("bioimageio export (single pass)", single, t2 - t1)):
            s = evaluation.scores(np.asarray(result)[part], reference[part], peak=255.0)
            rows.append({"preset": preset, "method": name, **s,
                         "seconds": None if seconds is None else round(seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| preset | method | PSNR (dB) | SSIM | seconds |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['seconds'] or ''} |")


if __name__ == "__main__":
    main()
