"""Restoration of a 2D image or a stack (slice by slice), tiled, batched, with uncertainty.

The public entry points are :func:`restore` and :func:`restore_slices`; :func:`sample_plane`
is the unit other tasks (isotropic reconstruction, streaming) build on.
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .device import autocast, resolve_device
from .diffusion.samplers import SAMPLERS, evaluations, sample
from .diffusion.schedules import sampling_sigmas
from .model import RestorationModel
from .noise import positional_noise
from .normalize import Normalizer, to_dtype
from .tiling import Cancelled, TiledDenoiser, TileGrid
from .uncertainty import aleatoric_std, reliability_mask, sample_std

Progress = Callable[[int, int], None] | None
Cancel = Callable[[], bool] | None

__all__ = ["restore", "restore_slices", "RestoreResult", "Cancelled", "Settings", "sample_plane"]


@dataclass
class Settings:
    """How to sample: the model card's defaults, overridden by what the caller sets."""

    sampler: str
    steps: int
    grid: str
    samples: int
    sigma_min: float
    sigma_max: float
    rho: float
    tile: int
    overlap: int
    batch_size: int
    sampler_options: dict = field(default_factory=dict)
    # sample_mean: the mean of the K samples (EMDiffuse); posterior_mean: the denoiser's
    # estimate at the noisiest level, E[x0 | condition], averaged over the K starts. Both
    # estimate the posterior mean; the second has no sampling noise (Rao-Blackwellised).
    estimate: str = "sample_mean"
    # posterior_mean only: also average the estimate over this many of the 8 rotations/flips of
    # the image (self-ensemble), one extra network evaluation per tile each.
    ensemble: int = 1
    precision: str = "auto"  # auto: bf16 on CUDA and on CPUs with native bf16 (see inference_autocast)

    @classmethod
    def for_model(cls, model: RestorationModel, device: torch.device, **overrides) -> "Settings":
        d, t = model.diffusion, model.tile
        s = cls(sampler=d["sampler"], steps=int(d["steps"]), grid=d["grid"], samples=int(d["samples"]),
                sigma_min=float(d["sigma_min"]), sigma_max=float(d["sigma_max"]), rho=float(d.get("rho", 7.0)),
                tile=int(t["size"]), overlap=int(t["overlap"]),
                batch_size=16 if device.type == "cuda" else 4,
                sampler_options=dict(d.get("sampler_options") or {}), precision=str(d.get("precision", "auto")),
                estimate=str(d.get("estimate", "sample_mean")), ensemble=int(d.get("ensemble", 1)))
        s = replace(s, **{k: v for k, v in overrides.items() if v is not None})
        if s.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {s.precision!r}: use one of {', '.join(PRECISIONS)}")
        if not 1 <= s.ensemble <= 8:
            raise ValueError("ensemble must be between 1 and 8 (rotations and flips of the image)")
        if s.estimate not in ESTIMATES:
            raise ValueError(f"unknown estimate {s.estimate!r}: use one of {', '.join(ESTIMATES)}")
        if s.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {s.sampler!r}: use one of {', '.join(SAMPLERS)}")
        if s.steps < 1 or s.samples < 1:
            raise ValueError("steps and samples must be at least 1")
        if s.tile < 16:
            raise ValueError("tile size must be at least 16 pixels")
        return s

    def sigmas(self) -> torch.Tensor:
        return sampling_sigmas(self.steps, self.grid, self.sigma_min, self.sigma_max, self.rho)

    @property
    def evaluations(self) -> int:
        return evaluations(self.sampler, self.steps)


PRECISIONS = ("auto", "fp32", "bf16")
ESTIMATES = ("sample_mean", "posterior_mean")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere oneDNN emulates
    it and bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def inference_autocast(device: torch.device, precision: str = "auto"):
    """Autocast for sampling. ``auto``: bf16 on CUDA (fp16 where bf16 is missing) and on CPUs
    with native bf16 (1.8-1.9x faster than fp32 there at the same PSNR, docs/benchmarks.md),
    fp32 on other CPUs, where bf16 is emulated; ``bf16`` forces it on the CPU; ``fp32`` turns it
    off. The sampler always stays in fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cpu":
        use_bf16 = precision == "bf16" or (precision == "auto" and cpu_has_native_bf16())
        return torch.autocast("cpu", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    return autocast(device)


@dataclass
class RestoreResult:
    """``mean`` has the input's shape and dtype; ``std`` / ``aleatoric`` are float32 standard
    deviations in input intensity units (None when unavailable); ``mask`` is 1 where the
    uncertainty exceeds the threshold."""

    mean: np.ndarray
    std: np.ndarray | None = None
    aleatoric: np.ndarray | None = None
    mask: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def sample_plane(model: RestorationModel, condition: torch.Tensor, settings: Settings, *,
                 seed: int, streams: Sequence[tuple[int, ...]], origin: tuple[int, int] = (0, 0),
                 slice_index: torch.Tensor | None = None, on_batch: Callable[[int], None] | None = None,
                 cancel: Cancel = None, with_mean: bool = False):
    """Draw one sample per stream for a (1 or B, C, H, W) normalised condition on the device.

    Returns samples (B, 1, H, W) and the aleatoric log-variance (B, 1, H, W) or None, and with
    ``with_mean`` also the denoiser's estimate at the first (noisiest) level, (B, 1, H, W).
    Noise is seeded by (seed, stream, step) and the global pixel position ``origin + (y, x)``.
    """
    device = condition.device
    h, w = condition.shape[-2:]
    grid = TileGrid.plan((h, w), settings.tile, settings.overlap, model.network.downsample_factor, origin)
    ph, pw = grid.padded_shape
    if (ph, pw) != (h, w):
        mode = "reflect" if ph - h < h and pw - w < w else "replicate"
        condition = F.pad(condition, (0, pw - w, 0, ph - h), mode=mode)

    def noise(step: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([
            positional_noise(origin, (ph, pw), seed, (*stream, step))[None] for stream in streams
        ])).to(device)

    tiled = TiledDenoiser(model.denoiser(), condition, grid, settings.batch_size, slice_index=slice_index,
                          autocast=lambda: inference_autocast(device, settings.precision), on_batch=on_batch, cancel=cancel)
    sigmas = settings.sigmas().to(device)
    x = noise(0) * float(sigmas[0])
    # sampler steps draw noise(i) for i >= 0; shift so they never reuse the initial noise
    x = sample(settings.sampler, tiled, x, sigmas, lambda i: noise(i + 1), **settings.sampler_options)
    logvar = tiled.first_logvar
    out = x[..., :h, :w], (None if logvar is None else logvar[..., :h, :w])
    return (*out, tiled.first_x0[..., :h, :w]) if with_mean else out


def _prepare(model, device, task):
    if not isinstance(model, RestorationModel):
        from .loading import load_model

        model = load_model(model, task=task)
    if task is not None:
        model.require_task(task)
    model.network.to(device).eval()
    if device.type in ("cpu", "cuda") and getattr(model.network, "dims", 2) == 2:
        model.network.to(memory_format=torch.channels_last)
    return model


def _check_image(image) -> None:
    if image.ndim not in (2, 3):
        raise ValueError(f"expected a 2D image or a stack (Z, Y, X), got {image.ndim} dimensions: "
                         "split channels or time points first")
    if image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[0] > 4:
        raise ValueError(f"the image looks like RGB(A) with shape {tuple(image.shape)}: convert it to grayscale first")


def _fit_normalizer(image, model: RestorationModel) -> Normalizer:
    norm = model.normalization
    if image.ndim == 3 and image.shape[0] > 16:  # lazy inputs: a few evenly spaced slices suffice
        picks = np.linspace(0, image.shape[0] - 1, 16).round().astype(int)
        image = np.stack([np.asarray(image[int(z)]) for z in picks])
    return Normalizer.for_card(np.asarray(image), norm)


def dihedral(t: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The k-th of the 8 rotations/flips of the last two axes, or its inverse."""
    rot, flip = k % 4, k >= 4
    if inverse:
        return torch.rot90(t.flip(-1) if flip else t, -rot, dims=(-2, -1))
    t = torch.rot90(t, rot, dims=(-2, -1))
    return t.flip(-1) if flip else t


def view_tiles(shape: tuple[int, int], turn: int, settings: Settings, multiple: int) -> int:
    """Tiles of one ensemble view of a plane: a quarter turn swaps its height and width, which may
    change the number of tiles (progress counts them)."""
    shape = tuple(shape)[::-1] if turn % 2 else tuple(shape)
    return len(TileGrid.plan(shape, settings.tile, settings.overlap, multiple).windows())


def _ensemble_mean(model, cond, first, settings, seed, z, on_batch, cancel) -> torch.Tensor:
    """The posterior-mean estimate averaged over ``settings.ensemble`` rotations/flips: the
    network is not exactly equivariant, and its errors partly cancel (EDSR's self-ensemble)."""
    one_level = replace(settings, steps=1, samples=1)
    estimates = [first.mean(0, keepdim=True)]
    for k in range(1, settings.ensemble):
        out = sample_plane(model, dihedral(cond, k), one_level, seed=seed, streams=[(z, 2 ** 20 + k)],
                           on_batch=on_batch, cancel=cancel, with_mean=True)[2]
        estimates.append(dihedral(out, k, inverse=True))
    return torch.cat(estimates).mean(0, keepdim=True)


def _condition_for(model: RestorationModel, plane: np.ndarray, device) -> torch.Tensor:
    cond = torch.from_numpy(plane)[None, None].to(device)
    if model.task == "superres":
        scale = int(model.card.get("superres", {}).get("scale", 2))
        cond = F.interpolate(cond, scale_factor=scale, mode="bicubic", align_corners=False)
    return cond


def restore_slices(image, model: RestorationModel | str, *, task: str | None = None,
                   samples: int | None = None, steps: int | None = None, sampler: str | None = None,
                   grid: str | None = None, tile: int | None = None, overlap: int | None = None,
                   batch_size: int | None = None, device: str = "auto", seed: int = 0,
                   progress: Progress = None, cancel: Cancel = None, threshold: float | None = None,
                   slices: Sequence[int] | None = None, origin: tuple[int, int, int] = (0, 0, 0),
                   normalizer: Normalizer | None = None,
                   estimate: str | None = None, ensemble: int | None = None) -> Iterator[tuple[int, RestoreResult]]:
    """Restore slice by slice, yielding ``(z, RestoreResult)`` as each slice finishes.

    ``image`` is (Y, X) (yields z = 0) or (Z, Y, X); numpy, dask or zarr (read one slice at a
    time). ``slices`` restricts a stack to some z. ``progress(done, total)`` counts tile
    evaluations; ``cancel()`` is polled between network batches and raises :class:`Cancelled`.
    ``origin`` (z, y, x) places ``image`` in a larger volume and ``normalizer`` is one fitted on
    that volume: a block restored with both draws the noise the whole volume would (streaming).
    """
    _check_image(image)
    dev = resolve_device(device)
    model = _prepare(model, dev, task)
    settings = Settings.for_model(model, dev, samples=samples, steps=steps, sampler=sampler, grid=grid,
                                  tile=tile, overlap=overlap, batch_size=batch_size, estimate=estimate,
                                  ensemble=ensemble)
    normalizer = normalizer if normalizer is not None else _fit_normalizer(image, model)
    span = normalizer.hi - normalizer.lo
    thr = float(threshold if threshold is not None else model.uncertainty.get("threshold", np.inf))
    zs = [0] if image.ndim == 2 else list(slices if slices is not None else range(image.shape[0]))
    plane_shape = image.shape[-2:]
    scale = int(model.card.get("superres", {}).get("scale", 2)) if model.task == "superres" else 1
    out_shape = tuple(s * scale for s in plane_shape)
    probe = TileGrid.plan(out_shape, settings.tile, settings.overlap, model.network.downsample_factor,
                          (origin[1] * scale, origin[2] * scale))
    ensemble = settings.ensemble if settings.estimate == "posterior_mean" else 1
    per_plane = len(probe.windows()) * settings.samples * settings.evaluations
    per_plane += sum(view_tiles(out_shape, k, settings, model.network.downsample_factor) for k in range(1, ensemble))
    total = per_plane * len(zs)
    done = [0]

    def on_batch(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    for z in zs:
        t0 = time.perf_counter()
        plane = np.asarray(image if image.ndim == 2 else image[z])
        cond = _condition_for(model, normalizer(plane), dev)
        streams = [(origin[0] + z, k) for k in range(settings.samples)]
        while True:
            try:
                xs, logvar, first = sample_plane(model, cond, settings, seed=seed, streams=streams,
                                                 origin=(origin[1] * scale, origin[2] * scale),
                                                 on_batch=on_batch, cancel=cancel, with_mean=True)
                break
            except torch.OutOfMemoryError:
                if settings.batch_size == 1:
                    raise
                settings.batch_size //= 2  # the largest batch that fits, found once
                torch.cuda.empty_cache()
        if ensemble > 1:
            first = _ensemble_mean(model, cond, first, settings, seed, origin[0] + z, on_batch, cancel)
        xs = xs[:, 0].float().cpu().numpy()
        estimate = xs if settings.estimate == "sample_mean" else first[:, 0].float().cpu().numpy()
        mean = to_dtype(normalizer.inverse(estimate.mean(axis=0)), image.dtype)
        std = sample_std(xs)
        std = None if std is None else std * (span / 2)
        ale = None if logvar is None else aleatoric_std(logvar[:, 0].cpu().numpy()) * (span / 2)
        basis = std if std is not None else ale
        mask = None if basis is None or not np.isfinite(thr) else reliability_mask(basis, span, thr)
        info = {"z": z, "seconds": time.perf_counter() - t0, "device": str(dev),
                "evaluations": settings.evaluations, "samples": settings.samples, "sampler": settings.sampler,
                "steps": settings.steps, "estimate": settings.estimate, "ensemble": ensemble, "tile": settings.tile, "batch_size": settings.batch_size,
                "normalizer": (normalizer.lo, normalizer.hi), "threshold": thr, "model": model.name}
        yield z, RestoreResult(mean, std, ale, mask, info)


def restore(image, model: RestorationModel | str, **kwargs) -> RestoreResult:
    """Restore a 2D image or a whole stack; see :func:`restore_slices` for the arguments.

    On cancel, :class:`Cancelled` is raised with ``partial`` holding a RestoreResult of the
    slices that finished (in ``info["slices"]``).
    """
    image_ndim = np.ndim(image) if not hasattr(image, "ndim") else image.ndim
    finished: list[tuple[int, RestoreResult]] = []
    t0 = time.perf_counter()
    try:
        for z, res in restore_slices(image, model, **kwargs):
            finished.append((z, res))
    except Cancelled as exc:
        exc.partial = _assemble(finished, image_ndim == 2, t0) if finished else None
        raise
    return _assemble(finished, image_ndim == 2, t0)


def _assemble(finished: list[tuple[int, RestoreResult]], single: bool, t0: float) -> RestoreResult:
    results = [r for _, r in finished]
    if single:
        res = results[0]
        res.info["seconds"] = time.perf_counter() - t0
        return res

    def stack(name):
        parts = [getattr(r, name) for r in results]
        return None if any(p is None for p in parts) else np.stack(parts)

    info = dict(results[0].info)
    info.update(seconds=time.perf_counter() - t0, slices=[z for z, _ in finished])
    info.pop("z", None)
    return RestoreResult(stack("mean"), stack("std"), stack("aleatoric"), stack("mask"), info)
