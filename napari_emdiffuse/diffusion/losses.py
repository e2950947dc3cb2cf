"""Training losses. ``logvar`` is the aleatoric head's predicted log-variance."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def l1(pred, target, **_):
    return (pred - target).abs().mean()


def l2(pred, target, **_):
    return F.mse_loss(pred, target)


def huber(pred, target, delta: float = 0.1, **_):
    return F.huber_loss(pred, target, delta=delta)


def heteroscedastic(pred, target, logvar=None, **_):
    """Gaussian negative log-likelihood 0.5 * (exp(-s) * err^2 + s), s = predicted log-variance."""
    if logvar is None:
        raise ValueError("the heteroscedastic loss needs a network with an aleatoric head")
    return 0.5 * (torch.exp(-logvar) * (pred - target) ** 2 + logvar).mean()


def pinball(pred, target, quantile: float = 0.5, **_):
    """Quantile (pinball) loss; ``quantile = 0.5`` is half the L1 loss."""
    err = target - pred
    return torch.maximum(quantile * err, (quantile - 1) * err).mean()


LOSSES = {"l1": l1, "l2": l2, "huber": huber, "heteroscedastic": heteroscedastic, "pinball": pinball}


def get_loss(name: str):
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}: use one of {', '.join(LOSSES)}") from None
