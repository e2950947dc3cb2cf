"""A restoration model: a network plus the model card that says how to use it."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .diffusion.denoiser import Denoiser
from .nn import ResidualUNet, UNet
from .tasks import task_names

# What a card leaves out. Sampling defaults are the fast solver on the EDM grid (docs/benchmarks.md).
DEFAULT_DIFFUSION = {
    "parameterization": "eps",
    "clip": [-1.0, 1.0],
    "sigma_min": 2e-3,
    "sigma_max": 80.0,
    "sampler": "dpmpp_2m",
    "steps": 10,
    "grid": "karras",
    "rho": 7.0,
    "samples": 2,
}
DEFAULT_NORMALIZATION = {"low": 0.1, "high": 99.9}
DEFAULT_TILE = {"size": 256, "overlap": 24}


def _merged(defaults: dict, given: dict | None) -> dict:
    out = copy.deepcopy(defaults)
    out.update(given or {})
    return out


@dataclass
class RestorationModel:
    """``network(x, noise_level[, slice_index])`` plus its card (task, diffusion, normalisation)."""

    card: dict
    network: nn.Module
    source: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.card.get("name", "model")

    @property
    def task(self) -> str:
        return self.card["task"]

    @property
    def diffusion(self) -> dict:
        return _merged(DEFAULT_DIFFUSION, self.card.get("diffusion"))

    @property
    def normalization(self) -> dict:
        return _merged(DEFAULT_NORMALIZATION, self.card.get("normalization"))

    @property
    def tile(self) -> dict:
        return _merged(DEFAULT_TILE, self.card.get("tile"))

    @property
    def uncertainty(self) -> dict:
        return dict(self.card.get("uncertainty") or {})

    @property
    def aleatoric(self) -> bool:
        return bool(getattr(self.network, "aleatoric", False))

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def denoiser(self) -> Denoiser:
        d = self.diffusion
        clip = tuple(d["clip"]) if d.get("clip") is not None else None
        return Denoiser(self.network, d["parameterization"], clip)

    def to(self, device) -> "RestorationModel":
        self.network.to(device)
        return self

    def require_task(self, task: str) -> None:
        if self.task != task:
            raise ValueError(
                f"model {self.name!r} is a {self.task} model, not a {task} model: "
                f"choose a {task} model (`emdiffuse models` lists them)"
            )


def build_network(network_card: dict) -> UNet:
    kw = dict(network_card)
    kind = kw.pop("kind", "unet")
    if kind not in ("unet", "residual_unet"):
        raise ValueError(f"unknown network kind {kind!r} in the model card: use unet or residual_unet")
    if "channel_mults" in kw:
        kw["channel_mults"] = tuple(kw["channel_mults"])
    if "attn_res" in kw:
        kw["attn_res"] = tuple(kw["attn_res"])
    if kind == "residual_unet":  # x0 = interpolation baseline + UNet (nn/residual.py)
        return ResidualUNet(**kw)
    return UNet(**kw)


def model_from_card(card: dict, state_dict: dict | None = None, source: str = "") -> RestorationModel:
    if card.get("task") not in task_names():
        raise ValueError(f"model card task must be one of {', '.join(task_names())}, got {card.get('task')!r}")
    network = build_network(card["network"])
    if state_dict is not None:
        network.load_state_dict(state_dict)
    return RestorationModel(card=card, network=network.eval(), source=source)
