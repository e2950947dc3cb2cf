"""A UNet that predicts its correction to the interpolation baseline (network kind
``residual_unet``): its x0 output is the baseline computed from its own condition plus what the
UNet adds. For super-resolution the baseline is the condition itself (the bicubic upsampling);
with a slice embedding (isotropic) it is the linear interpolation between the two conditioning
slices at the generated slice's position (index+1)/z_factor. The UNet's output layer starts at
zero, so an untrained network already returns the baseline and training can only start from it:
on a CPU budget this is what lets a small model beat interpolation. Same parameters (and names)
as the plain UNet; only meaningful with ``parameterization: x0``."""
from __future__ import annotations

import torch

from .unet import UNet


class ResidualUNet(UNet):
    def __init__(self, *args, residual_z_factor: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.slice_embedding and not residual_z_factor:
            raise ValueError("a residual network with a slice embedding needs residual_z_factor (the z-factor)")
        self.residual_z_factor = residual_z_factor

    def baseline(self, x: torch.Tensor, slice_index: torch.Tensor | None) -> torch.Tensor:
        if not self.slice_embedding:
            return x[:, :1]
        idx = torch.as_tensor(slice_index, device=x.device).reshape(-1).expand(x.shape[0]).float()
        w = ((idx + 1) / self.residual_z_factor).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return (1 - w) * x[:, 1:2] + w * x[:, 0:1]  # vEMDiffuse order: channel 0 is slice i+1

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor,
                slice_index: torch.Tensor | None = None) -> torch.Tensor:
        out = super().forward(x, noise_level, slice_index).float()
        base = self.baseline(x.float(), slice_index)  # in float32: bf16 would blur the baseline itself
        return torch.cat([out[:, :1] + base, out[:, 1:]], dim=1)
