"""Train, export and evaluate the bundled x2 super-resolution model on real ssTEM.

    python weights/train_superres.py train --steps 2500 --run build/superres-sstem-run
    python weights/export_run.py build/superres-sstem-run --name superres-sstem --command "..."
    python weights/train_superres.py evaluate --model superres-sstem --update-card

Training images: the bundled ssTEM crop (ISBI 2012, 30 sections, rows/columns 128-383, 4 nm pixels)
and the rest of every section outside the held-out rows (weights/data/sstem_isbi2012_train_tiles.tif);
the low-resolution input is their 2x2 mean binning (what a scan with 8 nm pixels approximates).
Regions (napari_emdiffuse/evaluation.py, SPLITS["superres-sstem"]): val is
weights/data/sstem_isbi2012_val.tif (sections 0, 3, ..., 27, rows 0-127: the loss curve, settings,
the uncertainty calibration), test is weights/data/sstem_isbi2012_test.tif (sections 1, 4, ..., 28,
rows 0-127), scored once by ``evaluate`` against bicubic upsampling of the same binned input;
neither is in any training file.
"""
from __future__ import annotations

import numpy as np
import tifffile

import _script
from napari_emdiffuse.sample_data import load_sstem
from napari_emdiffuse.api import restore
from napari_emdiffuse.tasks import superres as sr
from napari_emdiffuse.evaluation import SPLITS
from napari_emdiffuse.training import pairs
from napari_emdiffuse.training.data import PatchPairs

VALIDATION = _script.REPO / SPLITS["superres-sstem"]["val"]["files"][0]
TEST = _script.REPO / SPLITS["superres-sstem"]["test"]["files"][0]
EXTRA_TILES = _script.REPO / "weights" / "data" / "sstem_isbi2012_train_tiles.tif"
TILE = 128
SCALE = 2

CARD = {
    "name": "superres-sstem",
    "task": "superres",
    "description": "x2 super-resolution of TEM/SEM sections (input: an image with twice the pixel size), "
                   "EMDiffuse-style conditional diffusion on the bicubic upsampling; trained on real ssTEM "
                   "of Drosophila VNC (ISBI 2012), base 32 channels (5.0 M parameters), CPU-trained.",
    "network": {"kind": "residual_unet", "dims": 2, "in_channel": 2, "out_channel": 1, "inner_channel": 32,
                "channel_mults": [1, 2, 4, 4], "res_blocks": 1, "attn_res": [], "num_head_channels": 32,
                "norm_groups": 8, "dropout": 0.0, "aleatoric": True},
    "diffusion": {"parameterization": "x0", "clip": [-1.5, 1.5], "sigma_min": 0.002, "sigma_max": 80.0,
                  "sampler": "dpmpp_2m", "grid": "karras", "steps": 4, "samples": 1},
    "normalization": {"low": 0.1, "high": 99.9},
    "tile": {"size": 256, "overlap": 24},
    "superres": {"scale": SCALE, "degradation": "2x2 mean binning"},
}


def validation_stack() -> np.ndarray:
    return tifffile.imread(VALIDATION)


def region(path) -> _script.Region:
    """A scored stack on the high-resolution grid: its 2x2 binning as input, bicubic as baseline."""
    hr = sr.crop_to_multiple(tifffile.imread(path), SCALE)
    lr = sr.bin_mean(hr, SCALE)
    return _script.Region(lr, hr, sr.bicubic_baseline(lr, SCALE))


def val_region() -> _script.Region:
    """The validation stack as ``evaluate`` scores it (settings are compared here, never on test)."""
    return region(VALIDATION)


def training_tiles() -> np.ndarray:
    """The bundled crop cut into 128 x 128 tiles, with the tiles of the rest of every section."""
    crop = load_sstem()
    z, h, w = crop.shape
    tiles = crop.reshape(z, h // TILE, TILE, w // TILE, TILE).transpose(0, 1, 3, 2, 4).reshape(-1, TILE, TILE)
    return np.concatenate([tiles, tifffile.imread(EXTRA_TILES)])


def train(args) -> None:
    cond, target = pairs.training_pairs(training_tiles(), SCALE)
    vcond, vtarget = pairs.training_pairs(validation_stack(), SCALE)
    card = dict(CARD, training={
        "data": "napari_emdiffuse/sample_data/sstem_isbi2012_crop.tif (30 x 256 x 256) and "
                "weights/data/sstem_isbi2012_train_tiles.tif, as 360 tiles of 128 x 128",
        "degradation": "2x2 mean binning, then bicubic x2 upsampling as the condition",
        "validation": "weights/data/sstem_isbi2012_val.tif (10 x 128 x 512, disjoint rows)",
        "patch": args.patch, "intensity_jitter": args.jitter, "noise_draw": args.noise_draw})
    _script.train(args, card, PatchPairs(cond, target, patch=args.patch, intensity_jitter=args.jitter),
                  PatchPairs(vcond, vtarget, patch=args.patch))


def evaluate(args) -> dict:
    """The protocol on the val and test stacks, on the high-resolution grid, in 8-bit units."""
    from napari_emdiffuse.loading import load_model

    model = load_model(args.model, task="superres")
    notes = {"val": "weights/data/sstem_isbi2012_val.tif (10 x 128 x 512 at 4 nm)",
             "test": "weights/data/sstem_isbi2012_test.tif (10 x 128 x 512 at 4 nm)",
             "input": "the 2x2 mean binning of each (10 x 64 x 256)"}
    return _script.evaluate(args, "superres-sstem", val_region(), region(TEST), "bicubic",
                            lambda image, **setting: restore(image, model, task="superres", device="cpu", seed=0, **setting), notes)


if __name__ == "__main__":
    ARGS = _script.command_line(__doc__, CARD["name"])
    train(ARGS) if ARGS.cmd == "train" else evaluate(ARGS)
