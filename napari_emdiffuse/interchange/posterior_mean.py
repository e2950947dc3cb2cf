"""The exported network: one evaluation of the diffusion model that returns its posterior-mean
estimate E[x0 | input] in the input's intensities, as the restore core's ``posterior_mean``
estimate does with one sample, no ensemble and one tile.

Raw image in, restored image out: the card's percentile normalisation (with its binning) and its
inverse run inside, then the condition (the image; for super-resolution its bicubic upsampling;
for isotropic reconstruction the two slices around each gap), a noise start at ``sigma_max``
drawn from a counter-based hash of (seed, stream, pixel) so every run and every device draws the
same numbers, one network evaluation, the x0 estimate clipped as the card says.

Self-contained on purpose: it needs torch and the UNet classes only, so the exporter ships this
file with the UNet source as the architecture of a package that runs without napari-emdiffuse;
``forward`` is TorchScript-compatible, for the torchscript weights.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.residual import ResidualUNet
from ..nn.unet import UNet

# (TorchScript reads no module globals: constants are literals or attributes)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x < 2**32 without int64 overflow (16-bit halves)."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (lowbias32); exact integer arithmetic, so the same on any device."""
    x = x & 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hashed_gaussian(height: int, width: int, stream: int, seed: int, device: torch.device) -> torch.Tensor:
    """Standard normal float32 noise (height, width), a function of (seed, stream, row, column)
    only: Box-Muller on two hashed uniforms per pixel."""
    base = hash32(hash32(torch.tensor([seed], dtype=torch.int64, device=device)) ^ stream)
    rows = hash32(base ^ torch.arange(height, dtype=torch.int64, device=device))
    key = hash32(rows[:, None] ^ hash32(torch.arange(width, dtype=torch.int64, device=device) + 0x632BE5AB)[None])
    a, b = hash32(key ^ 0x68E31DA4), hash32(key ^ 0x1B56C4E9)
    u1 = (a.double() + 0.5) / 4294967296.0  # in (0, 1): the log is finite
    u2 = b.double() / 4294967296.0
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).float()


def _pad_to(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad the last two axes at the end, reflecting where the image is large enough (as tiling does)."""
    h, w = t.shape[-2], t.shape[-1]
    if height == h and width == w:
        return t
    mode = "reflect" if height - h < h and width - w < w else "replicate"
    return F.pad(t, [0, width - w, 0, height - h], mode=mode)


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def build_unet(network: dict) -> nn.Module:
    kw = dict(network)
    kind = kw.pop("kind", "unet")
    for key in ("channel_mults", "attn_res"):
        if key in kw:
            kw[key] = tuple(kw[key])
    return ResidualUNet(**kw) if kind == "residual_unet" else UNet(**kw)


class PosteriorMeanNetwork(nn.Module):
    """``forward(image)``: (B, 1, Y, X) -> (B, 1, Y*scale, X*scale) for denoise and superres;
    (B, 1, Z, Y, X) -> (B, 1, (Z-1)*z_factor+1, Y, X) for isotropic (acquired slices unchanged).
    Each sample is normalised on its own (a stack on 16 evenly spaced slices, as the restore
    core). The arguments are the model card's, JSON-serialisable (the package stores them)."""

    def __init__(self, network: dict, task: str = "denoise", parameterization: str = "eps",
                 clip: Optional[List[float]] = None, sigma_max: float = 80.0,
                 percentiles: Tuple[float, float] = (0.1, 99.9), bin: int = 1, scale: int = 1,
                 z_factor: int = 0, seed: int = 0):
        super().__init__()
        if task not in ("denoise", "superres", "isotropic"):
            raise ValueError(f"unknown task {task!r}: use denoise, superres or isotropic")
        if parameterization not in ("eps", "x0", "v"):
            raise ValueError(f"unknown parameterization {parameterization!r}: use eps, x0 or v")
        if task == "isotropic" and z_factor < 2:
            raise ValueError("isotropic reconstruction needs a z_factor of at least 2")
        self.network = build_unet(network)
        self.task, self.parameterization = task, parameterization
        self.has_clip = clip is not None
        self.clip_low = float(clip[0]) if clip is not None else 0.0
        self.clip_high = float(clip[1]) if clip is not None else 0.0
        self.sigma_max = float(sigma_max)
        self.low, self.high = float(percentiles[0]), float(percentiles[1])
        self.bin, self.scale, self.z_factor, self.seed = int(bin), int(scale), int(z_factor), int(seed)
        self.multiple = int(self.network.downsample_factor)
        self.max_percentile_samples = 2_000_000  # as Normalizer.fit: percentiles of a strided subsample
        self.max_percentile_planes = 16  # as the restore core: a stack's range from 16 evenly spaced planes

    # ---- normalisation (napari_emdiffuse.normalize.Normalizer, in torch) ----------------------
    def intensity_range(self, planes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The low/high percentiles of (N, Y, X) planes, of bin x bin block means if ``bin > 1``."""
        x = planes.float()
        if self.bin > 1 and min(x.shape[-2], x.shape[-1]) >= self.bin:
            x = F.avg_pool2d(x[:, None], self.bin, self.bin)[:, 0]
        flat = x.reshape(-1)
        if flat.numel() > self.max_percentile_samples:
            flat = flat[:: flat.numel() // self.max_percentile_samples + 1]
        flat = flat.double()
        q = torch.tensor([self.low / 100.0, self.high / 100.0], dtype=torch.float64, device=flat.device)
        lo_hi = torch.quantile(flat, q)
        lo, hi = lo_hi[0], lo_hi[1]
        if float(hi - lo) <= 1e-12:
            lo, hi = flat.min(), flat.max()
        if float(hi - lo) <= 1e-12:  # a constant image: nothing to restore, any positive span will do
            hi = lo + 1.0
        return lo, hi

    # ---- one denoiser evaluation at sigma_max ---------------------------------------------------
    def start_noise(self, height: int, width: int, stream: int, device: torch.device) -> torch.Tensor:
        return hashed_gaussian(height, width, stream, self.seed, device)

    def posterior_mean(self, condition: torch.Tensor, noise: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """x0 estimate (N, 1, H, W) for a normalised condition (N, C, H, W), the unit noise of the
        start (N, 1, H, W) and the generated-slice index (N,) (ignored unless isotropic)."""
        sigma = torch.full([condition.shape[0], 1, 1, 1], self.sigma_max, dtype=torch.float32, device=condition.device)
        gamma = 1.0 / (1.0 + sigma ** 2)
        x = noise * sigma
        y = x * gamma.sqrt()
        out = self.network(torch.cat([condition, y], dim=1), gamma.reshape(-1), index).float()
        pred = out[:, :1]
        if self.parameterization == "eps":
            x0 = (y - (1 - gamma).sqrt() * pred) / gamma.sqrt()
        elif self.parameterization == "v":
            x0 = gamma.sqrt() * y - (1 - gamma).sqrt() * pred
        else:
            x0 = pred
        if self.has_clip:
            x0 = x0.clamp(self.clip_low, self.clip_high)
        return x0

    def _evaluate(self, condition: torch.Tensor, streams: List[int], index: torch.Tensor) -> torch.Tensor:
        h, w = condition.shape[-2], condition.shape[-1]
        ph, pw = _round_up(h, self.multiple), _round_up(w, self.multiple)
        noise = torch.stack([self.start_noise(ph, pw, s, condition.device) for s in streams])[:, None]
        x0 = self.posterior_mean(_pad_to(condition, ph, pw), noise, index)
        return x0[:, :, :h, :w]

    # ---- the tasks ---------------------------------------------------------------------------------
    def restore_plane(self, plane: torch.Tensor) -> torch.Tensor:
        """(Y, X) raw -> (Y*scale, X*scale) restored, in the plane's intensities."""
        lo, hi = self.intensity_range(plane[None])
        cond = ((plane.float() - lo) / (hi - lo) * 2 - 1)[None, None]
        if self.task == "superres":
            cond = F.interpolate(cond, scale_factor=float(self.scale), mode="bicubic", align_corners=False)
        index = torch.zeros([1], dtype=torch.float32, device=plane.device)
        x0 = self._evaluate(cond, [0], index)[0, 0]
        return (x0 + 1) / 2 * (hi - lo) + lo

    def reconstruct_volume(self, volume: torch.Tensor) -> torch.Tensor:
        """(Z, Y, X) raw -> ((Z-1)*f+1, Y, X): each gap's f-1 slices generated from the slices
        around it (vEMDiffuse order: [slice i+1, slice i], index k-1 for the slice at k/f)."""
        z, f = volume.shape[0], self.z_factor
        picks = volume
        if z > self.max_percentile_planes:
            at = torch.linspace(0, z - 1, self.max_percentile_planes, dtype=torch.float64).round().long()
            picks = volume[at.to(volume.device)]
        lo, hi = self.intensity_range(picks)
        norm = (volume.float() - lo) / (hi - lo) * 2 - 1
        index = torch.arange(f - 1, dtype=torch.float32, device=volume.device)
        out: List[torch.Tensor] = []
        for gap in range(z - 1):
            cond = torch.stack([norm[gap + 1], norm[gap]])[None].expand(f - 1, 2, norm.shape[1], norm.shape[2])
            x0 = self._evaluate(cond, [gap * 65536 + k for k in range(1, f)], index)[:, 0]
            out.append(volume[gap:gap + 1].float())
            out.append((x0 + 1) / 2 * (hi - lo) + lo)
        out.append(volume[z - 1:z].float())
        return torch.cat(out)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        results: List[torch.Tensor] = []
        for b in range(image.shape[0]):
            if self.task == "isotropic":
                results.append(self.reconstruct_volume(image[b, 0]))
            else:
                results.append(self.restore_plane(image[b, 0]))
        return torch.stack(results)[:, None]
