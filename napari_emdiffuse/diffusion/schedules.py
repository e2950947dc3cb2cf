"""Noise schedules.

Everything is expressed in the noise level ``sigma`` of the variance-exploding form
``x = x0 + sigma * n``. A variance-preserving model conditioned on ``gamma`` (cumulative alpha)
sees the same state scaled: ``gamma = 1 / (1 + sigma**2)``, input ``x * sqrt(gamma)``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# EMDiffuse's published schedules (training, test): linear betas.
NAMED_SCHEDULES = {
    "emdiffuse_train": {"kind": "linear", "n": 2000, "start": 1e-6, "end": 1e-2},
    "emdiffuse_test": {"kind": "linear", "n": 1000, "start": 1e-4, "end": 0.09},
}


# Noise-level grids a sampler can step through (see sampling_sigmas).
GRIDS = ("karras", "loglinear", "respaced")


def betas(kind: str, n: int, start: float = 1e-4, end: float = 2e-2, cosine_s: float = 8e-3) -> np.ndarray:
    """Beta schedules: linear, quad, sqrt-linear, cosine (Nichol & Dhariwal), sqrt (Li et al. 2022)."""
    if kind == "linear":
        return np.linspace(start, end, n, dtype=np.float64)
    if kind == "quad":
        return np.linspace(start ** 0.5, end ** 0.5, n, dtype=np.float64) ** 2
    if kind == "sqrt_linear":
        return np.linspace(start, end, n, dtype=np.float64) ** 0.5
    t = np.arange(n + 1, dtype=np.float64) / n
    if kind == "cosine":
        alpha_bar = np.cos((t + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
    elif kind == "sqrt":
        alpha_bar = 1 - np.sqrt(t + 1e-4)
    else:
        raise ValueError(f"unknown beta schedule {kind!r}: use linear, quad, sqrt_linear, cosine or sqrt")
    alpha_bar = alpha_bar / alpha_bar[0]
    return np.clip(1 - alpha_bar[1:] / alpha_bar[:-1], 0, 0.999)


def gammas(schedule: dict | str) -> np.ndarray:
    """Cumulative alphas of a schedule (a dict of :func:`betas` arguments, or a named one)."""
    if isinstance(schedule, str):
        schedule = NAMED_SCHEDULES[schedule]
    return np.cumprod(1.0 - betas(**schedule))


def gamma_to_sigma(gamma):
    return ((1 - gamma) / gamma) ** 0.5


def sigma_to_gamma(sigma):
    return 1.0 / (1.0 + sigma ** 2)


def schedule_sigmas(schedule: dict | str) -> np.ndarray:
    """Increasing noise levels of a discrete schedule (timestep order)."""
    return gamma_to_sigma(gammas(schedule))


def sampling_sigmas(steps: int, grid: str = "karras", sigma_min: float = 2e-3, sigma_max: float = 80.0,
                    rho: float = 7.0, schedule: dict | str | None = None) -> torch.Tensor:
    """Decreasing noise levels for a sampler, ending with 0.

    * ``karras``: EDM's grid with exponent ``rho`` between sigma_max and sigma_min.
    * ``loglinear``: evenly spaced in log sigma.
    * ``respaced``: ``steps`` evenly spaced timesteps of a discrete ``schedule``, always starting at
      its last (noisiest) one. Unlike rebuilding the betas with fewer steps, this keeps the trained
      end points, so sampling starts from pure noise at any step count.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if grid == "karras":
        ramp = np.linspace(0, 1, steps)
        inv = sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
        sig = inv ** rho
    elif grid == "loglinear":
        sig = np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), steps))
    elif grid == "respaced":
        full = schedule_sigmas(schedule or "emdiffuse_test")
        idx = np.round(np.linspace(len(full) - 1, 0, steps)).astype(int)
        sig = full[idx]
    else:
        raise ValueError(f"unknown noise grid {grid!r}: use one of {', '.join(GRIDS)}")
    if steps == 1:
        sig = np.array([sigma_max if grid != "respaced" else sig[0]])
    return torch.tensor(np.append(sig, 0.0), dtype=torch.float64)
