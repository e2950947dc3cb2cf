"""Exponential moving average of a network's weights."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, network: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.network = copy.deepcopy(network).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        self.updates += 1
        # Early on the average would be dominated by the random initialisation.
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for ema_p, p in zip(self.network.parameters(), network.parameters()):
            ema_p.lerp_(p.detach(), 1 - decay)
        for ema_b, b in zip(self.network.buffers(), network.buffers()):
            ema_b.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "network": self.network.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        self.network.load_state_dict(state["network"])
