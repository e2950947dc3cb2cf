"""Turn a noise-level-conditioned network into a denoiser ``D(x, sigma) -> x0``."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

PARAMETERIZATIONS = ("eps", "x0", "v")


def network_target(parameterization: str, x0: torch.Tensor, noise: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """What the network learns to output for ``y = sqrt(gamma) x0 + sqrt(1-gamma) noise``."""
    if parameterization == "eps":
        return noise
    if parameterization == "x0":
        return x0
    if parameterization == "v":
        return gamma.sqrt() * noise - (1 - gamma).sqrt() * x0
    raise ValueError(f"unknown parameterization {parameterization!r}: use eps, x0 or v")


def x0_from_output(parameterization: str, out: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    if parameterization == "eps":
        return (y - (1 - gamma).sqrt() * out) / gamma.sqrt()
    if parameterization == "x0":
        return out
    if parameterization == "v":
        return gamma.sqrt() * y - (1 - gamma).sqrt() * out
    raise ValueError(f"unknown parameterization {parameterization!r}: use eps, x0 or v")


class Denoiser:
    """Wraps ``network(concat([condition, y]), gamma[, slice_index])`` as a denoiser.

    ``denoiser(x, sigma, condition)`` takes the variance-exploding state ``x = x0 + sigma * n``
    and returns the estimate of ``x0`` (clamped to ``clip``). For aleatoric networks the last
    output channel is a log-variance; it is returned by :meth:`with_logvar`.
    """

    def __init__(self, network: nn.Module, parameterization: str = "eps",
                 clip: tuple[float, float] | None = (-1.0, 1.0)):
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}: use eps, x0 or v")
        self.network, self.parameterization, self.clip = network, parameterization, clip
        self.aleatoric = bool(getattr(network, "aleatoric", False))

    def with_logvar(self, x: torch.Tensor, sigma: torch.Tensor | float, condition: torch.Tensor,
                    slice_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]).reshape(-1, *([1] * (x.ndim - 1)))
        gamma = 1.0 / (1.0 + sigma ** 2)
        y = x * gamma.sqrt()
        net_in = torch.cat([condition.to(x.dtype), y], dim=1)
        args = (net_in, gamma.reshape(-1)) if slice_index is None else (net_in, gamma.reshape(-1), slice_index)
        out = self.network(*args).float()
        logvar = out[:, -1:] if self.aleatoric else None
        pred = out[:, : x.shape[1]]
        x0 = x0_from_output(self.parameterization, pred, y.float(), gamma)
        if self.clip is not None:
            x0 = x0.clamp(*self.clip)
        return x0, logvar

    def __call__(self, x, sigma, condition, slice_index=None) -> torch.Tensor:
        return self.with_logvar(x, sigma, condition, slice_index)[0]

    def bind(self, condition: torch.Tensor, slice_index: torch.Tensor | None = None) -> Callable:
        """The denoiser as a function of (x, sigma) only, which is what samplers take."""
        return lambda x, sigma: self(x, sigma, condition, slice_index)
