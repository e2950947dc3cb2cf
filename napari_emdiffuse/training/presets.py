"""Model size presets for training a new model, and the card a new run starts from (light: the
Training widget reads them before torch is imported).

``base`` is the published EMDiffuse network (32 channels, mults 1-2-4-8, 2 res blocks, attention
in the middle block, dropout 0.2; ~16 M parameters): best quality, wants a GPU. ``small`` halves
its depth cost and trains on a laptop GPU; ``tiny`` is the bundled demo's size and trains on a CPU.
"""
from __future__ import annotations

import copy

from ..tasks import get_task

PRESETS: dict[str, dict] = {
    "tiny": {"inner_channel": 16, "channel_mults": [1, 2, 4, 4], "res_blocks": 1, "attn_res": [],
             "num_head_channels": 32, "norm_groups": 8, "dropout": 0.0},
    "small": {"inner_channel": 32, "channel_mults": [1, 2, 4, 4], "res_blocks": 1, "attn_res": [],
              "num_head_channels": 32, "norm_groups": 16, "dropout": 0.1},
    "base": {"inner_channel": 32, "channel_mults": [1, 2, 4, 8], "res_blocks": 2, "attn_res": [],
             "num_head_channels": 32, "norm_groups": 32, "dropout": 0.2},
}

# What a preset suggests for the other training settings (the user may change any of them).
SUGGESTED = {
    "tiny": {"patch": 96, "batch_size": 8, "lr": 2e-4, "steps": 2000},
    "small": {"patch": 128, "batch_size": 8, "lr": 1e-4, "steps": 20000},
    "base": {"patch": 256, "batch_size": 4, "lr": 5e-5, "steps": 100000},
}

# x0-prediction with an aleatoric head: few-step sampling and a per-pixel variance (as the demo).
NEW_MODEL_DIFFUSION = {"parameterization": "x0", "clip": [-1.5, 1.5], "sigma_min": 0.002, "sigma_max": 80.0,
                       "sampler": "dpmpp_2m", "grid": "karras", "steps": 4}

def network_card(preset: str, condition_channels: int = 1, slice_embedding: bool = False,
                 aleatoric: bool = True, dims: int = 2) -> dict:
    """The ``network`` section of a card: the preset plus the channels the data needs."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model size {preset!r}: use one of {', '.join(PRESETS)}")
    return {"kind": "unet", "dims": dims, "in_channel": condition_channels + 1, "out_channel": 1,
            **copy.deepcopy(PRESETS[preset]), "slice_embedding": slice_embedding, "aleatoric": aleatoric}


def new_card(task: str, preset: str = "tiny", name: str | None = None, condition_channels: int = 1,
             slice_embedding: bool = False, aleatoric: bool = True) -> dict:
    """A complete model card for a model trained from scratch."""
    return {
        "name": name or f"my-{task}",
        "task": task,
        "description": f"EMDiffuse-style {get_task(task).trained_description or task} ({preset} size)",
        "network": network_card(preset, condition_channels, slice_embedding, aleatoric),
        # an uncalibrated map reads the aleatoric head where there is one, else the spread of 2 samples
        "diffusion": {**copy.deepcopy(NEW_MODEL_DIFFUSION), "samples": 1 if aleatoric else 2},
        "normalization": {"low": 0.1, "high": 99.9},
    }
