"""Noise levels drawn during training."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..diffusion.schedules import gammas, sigma_to_gamma


def draw_sigmas(n: int, kind: str, generator: torch.Generator, sigma_min: float = 2e-3,
                sigma_max: float = 80.0, schedule: dict | str = "emdiffuse_train") -> torch.Tensor:
    """``schedule``: EMDiffuse's draw, gamma uniform between two neighbouring cumulative alphas;
    ``loguniform``: log sigma uniform in [sigma_min, sigma_max]; ``lognormal``: EDM's draw;
    ``loguniform_max``: loguniform, with a quarter of the draws at sigma_max, where the network's
    estimate is E[x0 | condition], the posterior-mean restoration (``loguniform_max:F`` puts a
    fraction F of the draws there)."""
    if kind.startswith("loguniform_max"):
        fraction = float(kind.partition(":")[2] or 0.25)
        if not 0 <= fraction <= 1:
            raise ValueError(f"noise draw {kind!r}: the fraction at sigma_max must be in [0, 1]")
        sig = draw_sigmas(n, "loguniform", generator, sigma_min, sigma_max, schedule)
        at_max = torch.rand(n, generator=generator) < fraction
        return torch.where(at_max, torch.full_like(sig, sigma_max), sig)
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
    raise ValueError(f"unknown noise draw {kind!r}: use schedule, loguniform, loguniform_max[:F] or lognormal")


__all__ = ["draw_sigmas", "sigma_to_gamma"]
