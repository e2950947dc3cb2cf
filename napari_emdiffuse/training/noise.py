"""Noise levels drawn during training."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..diffusion.schedules import gammas, sigma_to_gamma


def draw_sigmas(n: int, kind: str, generator: torch.Generator, sigma_min: float = 2e-3,
                sigma_max: float = 80.0, schedule: dict | str = "emdiffuse_train") -> torch.Tensor:
    """``schedule``: EMDiffuse's draw, gamma uniform between two neighbouring cumulative alphas;
    ``loguniform``: log sigma uniform in [sigma_min, sigma_max]; ``lognormal``: EDM's draw."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if kind == "loguniform":
        return torch.exp(math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min))).float()
    if kind == "lognormal":
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.exp(-1.2 + 1.2 * z).clamp(sigma_min, sigma_max).float()
    if kind == "schedule":
        g = torch.from_numpy(np.concatenate([[1.0], gammas(schedule)]))
        t = torch.randint(1, len(g), (n,), generator=generator)
        gamma = g[t - 1] + u * (g[t] - g[t - 1])
        return ((1 - gamma) / gamma).sqrt().float()
    raise ValueError(f"unknown noise draw {kind!r}: use schedule, loguniform or lognormal")


__all__ = ["draw_sigmas", "sigma_to_gamma"]
