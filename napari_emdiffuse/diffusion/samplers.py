"""Samplers: short pure functions of (denoise, x, sigmas, noise).

``denoise(x, sigma) -> x0`` works on the variance-exploding state ``x = x0 + sigma * n``;
``sigmas`` is decreasing and ends with 0; ``noise(i)`` returns fresh standard normal noise shaped
like ``x`` for step ``i`` (callers seed it, e.g. from the global position of a tile).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Noise = Callable[[int], torch.Tensor]
Callback = Callable[[int, int], None] | None


def _step_done(callback: Callback, i: int, total: int) -> None:
    if callback is not None:
        callback(i + 1, total)


def sample_ddim(denoise: Denoise, x, sigmas, noise: Noise, eta: float = 0.0, callback: Callback = None):
    """DDIM with stochasticity ``eta``; ``eta = 1`` is exactly ancestral DDPM (the true posterior
    step q(x_s | x_t, x0) for the denoised x0)."""
    n = len(sigmas) - 1
    for i in range(n):
        s_from, s_to = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, sigmas[i])
        if s_to == 0:
            x = x0
        else:
            s_up = min(s_to, eta * s_to * math.sqrt(s_from ** 2 - s_to ** 2) / s_from)
            s_down = math.sqrt(s_to ** 2 - s_up ** 2)
            x = x0 + (x - x0) * (s_down / s_from)
            if s_up > 0:
                x = x + s_up * noise(i)
        _step_done(callback, i, n)
    return x


def sample_ddpm(denoise: Denoise, x, sigmas, noise: Noise, callback: Callback = None):
    """Ancestral DDPM (EMDiffuse's sampler when ``sigmas`` is its full 1000-step test schedule)."""
    return sample_ddim(denoise, x, sigmas, noise, eta=1.0, callback=callback)


def sample_dpmpp_2m(denoise: Denoise, x, sigmas, noise: Noise | None = None, callback: Callback = None):
    """DPM-Solver++(2M): second-order multistep with data prediction (Lu et al. 2022)."""
    n = len(sigmas) - 1
    old_x0, h_last = None, None
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, sigmas[i])
        if s_next == 0:
            x = x0
        else:
            h = math.log(s / s_next)
            d = x0
            if old_x0 is not None and h_last is not None:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
            x = (s_next / s) * x - math.expm1(-h) * d
            h_last = h
        old_x0 = x0
        _step_done(callback, i, n)
    return x


def sample_heun(denoise: Denoise, x, sigmas, noise: Noise | None = None, churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                callback: Callback = None):
    """EDM's Heun sampler (Karras et al. 2022, Alg. 2); ``churn > 0`` is its stochastic variant."""
    n = len(sigmas) - 1
    for i in range(n):
        s = float(sigmas[i])
        gamma = min(churn / n, 2 ** 0.5 - 1) if churn > 0 and s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + (s_hat ** 2 - s ** 2) ** 0.5 * s_noise * noise(i)
        d = (x - denoise(x, torch.tensor(s_hat))) / s_hat
        s_next = float(sigmas[i + 1])
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:
            d2 = (x_next - denoise(x_next, sigmas[i + 1])) / s_next
            x_next = x + (s_next - s_hat) * (d + d2) / 2
        x = x_next
        _step_done(callback, i, n)
    return x


def sample_heun_churn(denoise: Denoise, x, sigmas, noise: Noise, churn: float = 10.0, **kw):
    """Stochastic EDM Heun with a default amount of churn."""
    return sample_heun(denoise, x, sigmas, noise, churn=churn, **kw)


SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "heun": sample_heun,
    "heun_churn": sample_heun_churn,
}


def evaluations(sampler: str, steps: int) -> int:
    """Network evaluations a sampler spends for ``steps`` noise levels."""
    return 2 * steps - 1 if sampler.startswith("heun") else steps


def sample(sampler: str, denoise: Denoise, x, sigmas, noise: Noise, callback: Callback = None, **options):
    """Run a sampler by name, starting from ``x`` at ``sigmas[0]``."""
    try:
        fn = SAMPLERS[sampler]
    except KeyError:
        raise ValueError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}") from None
    return fn(denoise, x, sigmas, noise=noise, callback=callback, **options)
