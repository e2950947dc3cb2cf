"""A guided-diffusion style UNet for 1D, 2D and 3D data.

Parameter names follow EMDiffuse's network (itself guided-diffusion's), so a published
EMDiffuse state dict loads after stripping its ``denoise_fn.`` prefix.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](*args, **kwargs)


def avg_pool_nd(dims: int, x: torch.Tensor) -> torch.Tensor:
    return {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims](x, 2, 2)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32, whatever the autocast dtype (stable under bf16/fp16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16:  # its kernels accumulate in fp32 already: same result, no copies
            return super().forward(x).type(x.dtype)
        return super().forward(x.float()).type(x.dtype)


def noise_level_embedding(level: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a continuous noise level (EMDiffuse: the raw gamma), [cos, sin]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=level.device) / half
    )
    args = level.reshape(-1, 1).float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class EmbedSequential(nn.Sequential):
    """A sequence whose ResBlocks also receive the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ResBlock(nn.Module):
    """Residual block with scale-shift conditioning; optionally halves or doubles the resolution."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int, dims: int,
                 groups: int, up: bool = False, down: bool = False, use_checkpoint: bool = False):
        super().__init__()
        self.dims, self.up, self.down, self.use_checkpoint = dims, up, down, use_checkpoint
        self.in_layers = nn.Sequential(
            GroupNorm32(groups, channels), nn.SiLU(), conv_nd(dims, channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        out_conv = conv_nd(dims, out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(out_conv.weight)  # each block starts as the identity
        nn.init.zeros_(out_conv.bias)
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, out_channels), nn.SiLU(), nn.Dropout(dropout), out_conv
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else conv_nd(dims, channels, out_channels, 1)
        )

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return avg_pool_nd(self.dims, x)
        return x

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.up or self.down:
            norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
            h = conv(self._resample(norm_act(x)))
            x = self._resample(x)
        else:
            h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).type(h.dtype).chunk(2, dim=1)
        scale = scale.reshape(*scale.shape, *([1] * self.dims))
        shift = shift.reshape(*shift.shape, *([1] * self.dims))
        h = self.out_layers[0](h) * (1 + scale) + shift
        h = self.out_layers[1:](h)
        return self.skip_connection(x) + h

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)


class AttentionBlock(nn.Module):
    """Self-attention over all positions, in guided-diffusion's legacy head layout.

    The 1x1 qkv output is read as (batch*heads, 3*head_channels, positions) and split into q, k, v,
    which is what published EMDiffuse weights expect.
    """

    def __init__(self, channels: int, num_head_channels: int, groups: int):
        super().__init__()
        self.num_heads = max(1, channels // num_head_channels)
        self.norm = GroupNorm32(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        head_ch = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, 3 * head_ch, -1).split(head_ch, dim=1)
        # (B*h, 1, T, ch), contiguous: the fused (flash) kernels refuse strided inputs and the
        # fallback is 3x slower on the CPU. Softmax scale 1/sqrt(ch) as in the original.
        q, k, v = (t.transpose(1, 2)[:, None].contiguous() for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]
        h = self.proj_out(out.transpose(1, 2).reshape(b, c, -1))
        return (flat + h).reshape(b, c, *spatial)


def _mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))


class UNet(nn.Module):
    """Conditional UNet: ``forward(x, noise_level[, slice_index])``.

    ``attn_res`` lists the downsampling rates (1, 2, 4, ...) that get attention; the middle block
    always has it. ``slice_embedding`` adds vEMDiffuse's second embedding (which intermediate slice
    is generated). ``aleatoric`` adds a log-variance head: the output then has ``out_channel + 1``
    channels, the last being the predicted log-variance.
    """

    def __init__(self, in_channel: int = 2, out_channel: int = 1, inner_channel: int = 32,
                 channel_mults: Sequence[int] = (1, 2, 4, 8), res_blocks: int = 2,
                 attn_res: Sequence[int] = (16,), num_head_channels: int = 32, dropout: float = 0.0,
                 dims: int = 2, norm_groups: int = 32, slice_embedding: bool = False,
                 aleatoric: bool = False, use_checkpoint: bool = False, image_size: int | None = None):
        super().__init__()
        del image_size  # accepted for EMDiffuse configs; the network is fully convolutional
        self.dims, self.inner_channel = dims, inner_channel
        self.in_channel, self.out_channel = in_channel, out_channel
        self.slice_embedding, self.aleatoric = slice_embedding, aleatoric
        self.downsample_factor = 2 ** (len(channel_mults) - 1)
        embed = 4 * inner_channel
        self.cond_embed = _mlp(inner_channel, embed)
        if slice_embedding:
            self.channel_embed = _mlp(inner_channel, embed)
        emb_dim = embed * (2 if slice_embedding else 1)

        def res(cin: int, cout: int, **kw) -> ResBlock:
            return ResBlock(cin, emb_dim, dropout, cout, dims, norm_groups, use_checkpoint=use_checkpoint, **kw)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, num_head_channels, norm_groups)

        ch = inner_channel
        self.input_blocks = nn.ModuleList([EmbedSequential(conv_nd(dims, in_channel, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(channel_mults):
            for _ in range(res_blocks):
                layers: list[nn.Module] = [res(ch, mult * inner_channel)]
                ch = mult * inner_channel
                if ds in attn_res:
                    layers.append(attn(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mults) - 1:
                self.input_blocks.append(EmbedSequential(res(ch, ch, down=True)))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mults))[::-1]:
            for i in range(res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), mult * inner_channel)]
                ch = mult * inner_channel
                if ds in attn_res:
                    layers.append(attn(ch))
                if level and i == res_blocks:
                    layers.append(res(ch, ch, up=True))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(norm_groups, ch), nn.SiLU(), conv_nd(dims, ch, out_channel, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        if aleatoric:
            self.logvar_out = nn.Sequential(GroupNorm32(norm_groups, ch), nn.SiLU(), conv_nd(dims, ch, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor,
                slice_index: torch.Tensor | None = None) -> torch.Tensor:
        level = torch.as_tensor(noise_level, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.cond_embed(noise_level_embedding(level, self.inner_channel))
        if self.slice_embedding:
            if slice_index is None:
                raise ValueError("this network generates intermediate slices: pass slice_index")
            idx = torch.as_tensor(slice_index, device=x.device).reshape(-1).expand(x.shape[0])
            emb = torch.cat([emb, self.channel_embed(noise_level_embedding(idx, self.inner_channel))], dim=1)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        out = self.out(h)
        if self.aleatoric:
            out = torch.cat([out, self.logvar_out(h)], dim=1)
        return out
