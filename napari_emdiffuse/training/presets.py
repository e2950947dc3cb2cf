"""Model size presets for training a new model, and the card a new run starts from.

``base`` is the published EMDiffuse network (32 channels, mults 1-2-4-8, 2 res blocks, attention
in the middle block, dropout 0.2; ~16 M parameters): best quality, wants a GPU. ``small`` halves
its depth cost and trains on a laptop GPU; ``tiny`` is the bundled demo's size and trains on a CPU.
"""
from __future__ import annotations

import copy
import os

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
                       "sampler": "dpmpp_2m", "grid": "karras", "steps": 4, "samples": 2}

DESCRIPTIONS = {
    "denoise": "denoising model trained on the user's noisy/clean pairs",
    "superres": "super-resolution model trained on the user's high-resolution images",
    "isotropic": "isotropic-reconstruction model trained on the user's volume",
}


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
        "description": f"EMDiffuse-style {DESCRIPTIONS.get(task, task)} ({preset} size)",
        "network": network_card(preset, condition_channels, slice_embedding, aleatoric),
        "diffusion": copy.deepcopy(NEW_MODEL_DIFFUSION),
        "normalization": {"low": 0.1, "high": 99.9},
    }


def start_model(data, preset: str = "tiny", base=None, name: str | None = None):
    """The model a run trains: a new one of size ``preset``, or ``base`` (a loaded
    RestorationModel, e.g. from ``load_model``) to fine-tune. ``data`` is a TrainingData."""
    from ..model import RestorationModel, model_from_card

    if base is None:
        card = new_card(data.task, preset, name, data.condition_channels, data.slice_embedding)
        card.update(copy.deepcopy(data.card))
        card["training"] = {"data": data.info}
        return model_from_card(card)
    base.require_task(data.task)
    card = {k: copy.deepcopy(v) for k, v in base.card.items() if k not in ("weights", "training", "evaluation")}
    card.update(copy.deepcopy(data.card))
    card["name"] = name or f"{base.name}-finetuned"
    card["description"] = f"{base.card.get('description', base.name)} Fine-tuned on the user's data."
    card["training"] = {"data": data.info, "fine_tuned_from": base.source or base.name}
    return RestorationModel(card=card, network=base.network, source=base.source)


def run_model(run_dir):
    """The model of an existing run folder, to resume: its card's network (the training state
    then restores every weight)."""
    from ..loading import read_card
    from ..model import model_from_card
    from . import runs

    return model_from_card(read_card(os.path.join(run_dir, runs.CARD_NAME)))
