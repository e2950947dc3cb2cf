"""The tiled sampler run over one :class:`~napari_emdiffuse.tasks.base.Unit`: its states are
sampled together, the network seeing batched tiles whose estimates are blended at every noise
level (:mod:`..tiling`), with noise seeded by (seed, stream, step) and global pixel position."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..device import inference_autocast
from ..diffusion.denoiser import Denoiser
from ..diffusion.samplers import sample
from ..noise import positional_noise
from ..tasks.base import Unit, dihedral
from ..tiling import TiledDenoiser, TileGrid
from .options import Settings

Cancel = Callable[[], bool] | None


@dataclass
class Sampled:
    """A unit's result on the CPU, normalised, each (planes, samples, H, W) float32: the final
    samples, the denoiser's estimate at the noisiest level (the posterior mean E[x0 | condition]
    from each start), and the aleatoric log-variance there (None without an aleatoric head)."""

    samples: np.ndarray
    first: np.ndarray
    logvar: np.ndarray | None


def prepare_network(model, device: torch.device) -> None:
    """Put the model's network on ``device`` for inference (channels-last for 2D networks)."""
    model.network.to(device).eval()
    if device.type in ("cpu", "cuda") and getattr(model.network, "dims", 2) == 2:
        model.network.to(memory_format=torch.channels_last)


def plan_grid(shape: tuple[int, int], settings: Settings, model, origin: tuple[int, int] = (0, 0)) -> TileGrid:
    return TileGrid.plan(tuple(shape), settings.tile, settings.overlap, model.network.downsample_factor, origin)


def unit_tiles(shape: tuple[int, int], settings: Settings, model) -> int:
    """Tiles of one plane of this shape (progress counts tile evaluations)."""
    return len(plan_grid(shape, settings, model).windows())


def sample_unit(model, unit: Unit, settings: Settings, *, seed: int, origin: tuple[int, int], device: torch.device,
                on_batch: Callable[[int], None] | None = None, cancel: Cancel = None) -> Sampled:
    """Sample every state of ``unit``; on CUDA running out of memory, retry with half the tile
    batch (the largest batch that fits is kept in ``settings``)."""
    while True:
        try:
            return _sample(model, unit, settings, seed, origin, device, on_batch, cancel)
        except torch.OutOfMemoryError:
            if settings.batch_size == 1:
                raise
            settings.batch_size //= 2
            torch.cuda.empty_cache()


def _sample(model, unit: Unit, settings: Settings, seed, origin, device, on_batch, cancel) -> Sampled:
    condition = torch.from_numpy(np.ascontiguousarray(unit.condition, dtype=np.float32)).to(device)
    h, w = condition.shape[-2:]
    grid = plan_grid((h, w), settings, model, origin)
    ph, pw = grid.padded_shape
    if (ph, pw) != (h, w):
        mode = "reflect" if ph - h < h and pw - w < w else "replicate"
        condition = F.pad(condition, (0, pw - w, 0, ph - h), mode=mode)
    channels = unit.channels

    def noise(step: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([
            np.stack([positional_noise(origin, (ph, pw), seed, (*stream, *((c,) if channels > 1 else ()), step))
                      for c in range(channels)])
            for stream in unit.streams])).to(device)

    base = model.denoiser()
    denoiser = base if unit.network is None else Denoiser(unit.network, base.parameterization, base.clip)
    index = None if unit.slice_index is None else torch.from_numpy(unit.slice_index).to(device)
    tiled = TiledDenoiser(denoiser, condition, grid, settings.batch_size, slice_index=index,
                          autocast=lambda: inference_autocast(device, settings.precision),
                          on_batch=on_batch, cancel=cancel)
    sigmas = settings.sigmas_run().to(device)
    x = noise(0) * float(sigmas[0])
    # sampler steps draw noise(i) for i >= 0; shift so they never reuse the initial noise
    x = sample(settings.sampler, tiled, x, sigmas, lambda i: noise(i + 1), **settings.sampler_options)

    def planes(t: torch.Tensor | None) -> np.ndarray | None:
        if t is None:
            return None
        t = t[..., :h, :w].float()
        t = unit.split(t) if unit.split is not None else t[:, 0].reshape(unit.planes, -1, h, w)
        return t.cpu().numpy()

    return Sampled(planes(x), planes(tiled.first_x0), planes(tiled.first_logvar))


def view_estimate(model, view: Unit, settings: Settings, *, seed: int, device: torch.device,
                  on_batch=None, cancel: Cancel = None) -> np.ndarray:
    """The posterior-mean estimate (planes, 1, H, W) of an ensemble view, turned back to the
    unit's orientation. A turned view has no place on the global lattice: its noise is seeded
    as at the origin."""
    one_level = replace(settings, steps=1, samples=1)
    first = sample_unit(model, view, one_level, seed=seed, origin=(0, 0), device=device, on_batch=on_batch,
                        cancel=cancel).first
    return np.ascontiguousarray(dihedral(first, view.turn, inverse=True))
