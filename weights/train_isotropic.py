"""Train, export and evaluate the bundled isotropic-reconstruction model (z-factor 5) on real FIB-SEM.

    python weights/train_isotropic.py train --steps 2500 --run build/isotropic-fibsem-run
    python weights/export_run.py build/isotropic-fibsem-run --name isotropic-fibsem --command "..."
    python weights/train_isotropic.py evaluate --model isotropic-fibsem --update-card

Route: from an isotropic volume (vEMDiffuse-i). Training volume: weights/data/fibsem_flyem_train.tif
and fibsem_flyem_train2.tif
(FlyEM FIB-SEM, 10 nm isotropic, slices 0-89 and 160-249 of the cube); every plane a and a+5 condition the
four planes between them (in both directions along z). Regions (napari_emdiffuse/evaluation.py,
SPLITS["isotropic-fibsem"]): val is the bundled sample crop
napari_emdiffuse/sample_data/fibsem_flyem_crop.tif (slices 93-156, rows and columns 61-188: the loss
curve, settings, the uncertainty calibration), test is weights/data/fibsem_flyem_test.tif (slices
93-156, rows 189-249, all columns), scored once by ``evaluate``: every fifth slice (50 nm spacing)
is reconstructed back to 10 nm and compared with the slices that were left out, against linear
interpolation along z.
"""
from __future__ import annotations

import numpy as np
import tifffile

import _script
from napari_emdiffuse.sample_data import load_fibsem
from napari_emdiffuse.api import restore
from napari_emdiffuse.tasks import isotropic as iso
from napari_emdiffuse.evaluation import SPLITS
from napari_emdiffuse.training import pairs
from napari_emdiffuse.training.data import PatchPairs

TRAINING = [_script.REPO / "weights" / "data" / name for name in ("fibsem_flyem_train.tif", "fibsem_flyem_train2.tif")]
Z_FACTOR = 5

CARD = {
    "name": "isotropic-fibsem",
    "task": "isotropic",
    "description": "Isotropic reconstruction x5 along z (e.g. 50 nm sections to 10 nm), vEMDiffuse-style 2D "
                   "network with slice embedding; trained on real FIB-SEM of Drosophila medulla (FlyEM), "
                   "demo size, CPU-trained.",
    "network": {"kind": "residual_unet", "dims": 2, "in_channel": 3, "out_channel": 1, "inner_channel": 16,
                "channel_mults": [1, 2, 4, 4], "res_blocks": 1, "attn_res": [], "num_head_channels": 32,
                "norm_groups": 8, "dropout": 0.0, "slice_embedding": True, "aleatoric": True,
                "residual_z_factor": Z_FACTOR},
    "diffusion": {"parameterization": "x0", "clip": [-1.5, 1.5], "sigma_min": 0.002, "sigma_max": 80.0,
                  "sampler": "dpmpp_2m", "grid": "karras", "steps": 4, "samples": 1},
    "normalization": {"low": 0.1, "high": 99.9},
    "tile": {"size": 256, "overlap": 24},
    "isotropic": {"z_factor": Z_FACTOR, "route": "isotropic", "slice_index": "0-based (k-1 for the slice at k/f)"},
}


def region(path) -> _script.Region:
    """A scored volume (``path`` relative to the repository): every fifth slice as input, linear
    interpolation along z as baseline, scored on the generated slices only."""
    truth = tifffile.imread(_script.REPO / path)
    n = (len(truth) - 1) // Z_FACTOR * Z_FACTOR + 1
    truth = truth[:n]
    generated = np.ones(n, bool)
    generated[::Z_FACTOR] = False
    acquired = truth[::Z_FACTOR]
    return _script.Region(acquired, truth, iso.linear_interpolation(acquired, Z_FACTOR), generated)


def val_region() -> _script.Region:
    """The validation volume as ``evaluate`` scores it (settings are compared here, never on test)."""
    return region(SPLITS["isotropic-fibsem"]["val"]["files"][0])


def train(args) -> None:
    parts = [pairs.volume_examples(tifffile.imread(path), Z_FACTOR) for path in TRAINING]
    d = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    v = pairs.volume_examples(load_fibsem(), Z_FACTOR, both_directions=False)
    card = dict(CARD, training={
        "data": "weights/data/fibsem_flyem_train.tif and fibsem_flyem_train2.tif (2 x 90 x 144 x 144, 10 nm), "
                "planes a, a+5 -> a+1..a+4, both directions",
        "validation": "napari_emdiffuse/sample_data/fibsem_flyem_crop.tif (64 x 128 x 128, disjoint slices)",
        "patch": args.patch, "intensity_jitter": args.jitter, "noise_draw": args.noise_draw})
    _script.train(args, card,
                  PatchPairs(d["condition"], d["target"], patch=args.patch, intensity_jitter=args.jitter,
                             slice_index=d["slice_index"]),
                  PatchPairs(v["condition"], v["target"], patch=args.patch, slice_index=v["slice_index"]))


def evaluate(args) -> dict:
    """The protocol on the val and test volumes, scored over the generated slices only (the
    acquired ones are exact for both methods)."""
    from napari_emdiffuse.loading import load_model

    model = load_model(args.model, task="isotropic")

    def run_model(acquired, **setting):
        res = restore(acquired, model, task="isotropic", device="cpu", seed=0, **setting)
        assert np.array_equal(res.mean[::Z_FACTOR], acquired)
        return res

    val, test = SPLITS["isotropic-fibsem"]["val"], SPLITS["isotropic-fibsem"]["test"]
    notes = {"val": f"{val['files'][0]} ({val['note']})", "test": f"{test['files'][0]} ({test['note']})",
             "input": f"every {Z_FACTOR}th slice (50 nm); scored on the generated slices"}
    return _script.evaluate(args, "isotropic-fibsem", val_region(), region(test["files"][0]), "linear",
                            run_model, notes)


if __name__ == "__main__":
    ARGS = _script.command_line(__doc__, CARD["name"])
    train(ARGS) if ARGS.cmd == "train" else evaluate(ARGS)
