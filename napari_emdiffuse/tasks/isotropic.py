"""Isotropic reconstruction of anisotropic volumes (vEMDiffuse).

For a z-factor f, the f-1 slices between each pair of acquired slices i, i+1 are generated,
conditioned on both, so a volume of n slices becomes (n-1)*f+1 slices; the acquired slices pass
through unchanged.

Two networks, one UNet definition:

* the EMDiffuse-compatible 2D network (vEMDiffuse): input ``concat([slice i+1, slice i, y_t])``
  and a slice embedding of which intermediate slice is generated. The index is 0-based, as
  vEMDiffuse's ``channel_index``: index k-1 generates the slice at k/f of the gap, so published
  vEMDiffuse checkpoints work unchanged. All f-1 slices (times the samples) of a gap are one
  batch of states of the tiled sampler.
* a true 3D variant (``network.dims: 3``): the whole gap, acquired ends included, as one block
  of depth f+1 conditioned on the linear interpolation between the ends, so the generated slices
  are consistent with each other in z too.

Training data comes from an isotropic volume (subsample z, the vEMDiffuse-i route) or from the
anisotropic volume alone (vEMDiffuse-a route): the volume is resliced along a lateral axis, whose
planes are subsampled by f there, and the model learned in that direction is applied along z.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import numpy as np

ROUTES = ("isotropic", "anisotropic")


# ---- geometry and baseline ---------------------------------------------------------------------
def output_depth(n_slices: int, z_factor: int) -> int:
    return (n_slices - 1) * z_factor + 1


def check_volume(volume, z_factor: int) -> None:
    if volume.ndim != 3:
        raise ValueError(f"isotropic reconstruction needs a volume (Z, Y, X), got {volume.ndim} dimensions "
                         f"{tuple(volume.shape)} — give a stack of at least 2 slices")
    if volume.shape[0] < 2:
        raise ValueError(f"the volume has {volume.shape[0]} slice: at least 2 are needed to generate "
                         "the slices between them")
    if int(z_factor) < 2:
        raise ValueError(f"z-factor must be at least 2, got {z_factor}: it is the number of output "
                         "slices per acquired slice spacing (e.g. 5 for 50 nm sections at 10 nm pixels)")


def linear_interpolation(volume, z_factor: int) -> np.ndarray:
    """The baseline: linear interpolation along z to (n-1)*f+1 slices (float32)."""
    vol = np.asarray(volume, dtype=np.float32)
    n, f = len(vol), int(z_factor)
    pos = np.arange(output_depth(n, f)) / f
    lo = np.minimum(np.floor(pos).astype(int), n - 2)
    w = (pos - lo).astype(np.float32)[:, None, None]
    return (1 - w) * vol[lo] + w * vol[lo + 1]


def subsample(volume, z_factor: int, axis: int = 0) -> np.ndarray:
    """Every f-th plane along ``axis``: what an acquisition f times coarser there would keep."""
    index = [slice(None)] * np.ndim(volume)
    index[axis] = slice(None, None, int(z_factor))
    return np.asarray(volume)[tuple(index)]


# ---- training data -----------------------------------------------------------------------------
def planes_along(volume, route: str = "isotropic", lateral_axis: int = 1) -> np.ndarray:
    """The stack of planes a model learns to interpolate between: z planes of an isotropic volume,
    or, for the anisotropic route, the volume resliced along a lateral axis (1 = y, 2 = x), whose
    planes (Z, X) or (Z, Y) are at the fine lateral spacing."""
    if route not in ROUTES:
        raise ValueError(f"unknown training route {route!r}: use 'isotropic' (from an isotropic volume) "
                         "or 'anisotropic' (from the anisotropic volume itself)")
    volume = np.asarray(volume)
    if route == "isotropic":
        return volume
    if lateral_axis not in (1, 2):
        raise ValueError(f"lateral_axis must be 1 (y) or 2 (x), got {lateral_axis}")
    return np.moveaxis(volume, lateral_axis, 0)


def slice_triplets(planes: np.ndarray, z_factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """vEMDiffuse training examples from consecutive planes (N, H, W): for every anchor a and
    offset k in 1..f-1, condition ``[plane a+f, plane a]``, target plane a+k, slice index k-1.
    Returns condition (M, 2, H, W), target (M, 1, H, W), slice_index (M,) float32."""
    f = int(z_factor)
    n = len(planes)
    if n < f + 1:
        raise ValueError(f"{n} planes are too few for z-factor {f}: at least {f + 1} are needed")
    anchors = np.repeat(np.arange(n - f), f - 1)
    offsets = np.tile(np.arange(1, f), n - f)
    condition = np.stack([planes[anchors + f], planes[anchors]], axis=1)
    target = planes[anchors + offsets][:, None]
    return condition, target, (offsets - 1).astype(np.float32)


def block_pairs(planes: np.ndarray, z_factor: int, depth_multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """3D-variant examples: condition = the linear interpolation between planes a and a+f over
    the f+1 positions of the gap, target = the true planes a..a+f; depth padded to a multiple of
    ``depth_multiple`` (the network's downsampling) by repeating the upper acquired plane.
    Returns (M, 1, D, H, W) twice."""
    f = int(z_factor)
    n = len(planes)
    if n < f + 1:
        raise ValueError(f"{n} planes are too few for z-factor {f}: at least {f + 1} are needed")
    conds = np.stack([_interpolated_block(planes[a], planes[a + f], f, depth_multiple) for a in range(n - f)])
    targets = np.stack([_pad_depth(planes[a:a + f + 1], depth_multiple) for a in range(n - f)])
    return conds[:, None], targets[:, None]


def _pad_depth(block: np.ndarray, multiple: int) -> np.ndarray:
    depth = -(-len(block) // multiple) * multiple
    return np.concatenate([block, np.repeat(block[-1:], depth - len(block), axis=0)])


def _interpolated_block(lower: np.ndarray, upper: np.ndarray, f: int, multiple: int) -> np.ndarray:
    w = (np.arange(f + 1, dtype=np.float32) / f)[:, None, None]
    return _pad_depth((1 - w) * lower[None] + w * upper[None], multiple)


def training_data(volume, z_factor: int, route: str = "isotropic", lateral_axis: int = 1,
                  low: float = 0.1, high: float = 99.9, dims: int = 2, depth_multiple: int = 1,
                  both_directions: bool = True) -> dict:
    """Normalised training examples for either route: ``condition``, ``target`` and (2D
    network) ``slice_index``. The normaliser is fitted on the whole volume, as at inference.
    ``both_directions`` also takes the planes in reverse order: the physics has no preferred
    direction along the cutting axis, so this doubles the examples for free."""
    from ..normalize import Normalizer

    planes = planes_along(volume, route, lateral_axis)
    planes = Normalizer.fit(planes, low, high)(planes)
    stacks = [planes, planes[::-1]] if both_directions else [planes]
    if dims == 3:
        parts = [block_pairs(p, z_factor, depth_multiple) for p in stacks]
        return {"condition": np.concatenate([c for c, _ in parts]), "target": np.concatenate([t for _, t in parts])}
    parts = [slice_triplets(p, z_factor) for p in stacks]
    return {"condition": np.concatenate([p[0] for p in parts]), "target": np.concatenate([p[1] for p in parts]),
            "slice_index": np.concatenate([p[2] for p in parts])}


@dataclass
class BlockPairs:
    """Random (D, patch, patch) crops of aligned 3D blocks (N, 1, D, H, W) for the 3D variant,
    with the same flips and rotations in the lateral plane as the 2D patches."""

    condition: np.ndarray
    target: np.ndarray
    patch: int = 64

    def __post_init__(self):
        h, w = self.condition.shape[-2:]
        self.patch = min(self.patch, int(min(h, w)) // 8 * 8)
        if self.patch < 16:
            raise ValueError(f"training planes of {h}x{w} pixels are too small: at least 16x16 needed")

    def draw(self, batch: int, rng: np.random.Generator) -> dict:
        import torch

        from ..training.data import augment

        n, _, _, h, w = self.condition.shape
        conds, targets = [], []
        for _ in range(batch):
            i = int(rng.integers(n))
            y, x = int(rng.integers(h - self.patch + 1)), int(rng.integers(w - self.patch + 1))
            win = (Ellipsis, slice(y, y + self.patch), slice(x, x + self.patch))
            c, t = augment([self.condition[i][win], self.target[i][win]], rng)
            conds.append(c)
            targets.append(t)
        return {"condition": torch.from_numpy(np.stack(conds)).float(),
                "target": torch.from_numpy(np.stack(targets)).float()}

    def fixed_batch(self, batch: int, seed: int = 1234) -> dict:
        return self.draw(batch, np.random.default_rng(seed))


# ---- inference ---------------------------------------------------------------------------------
def model_z_factor(model) -> int | None:
    value = (model.card.get("isotropic") or {}).get("z_factor")
    return None if value is None else int(value)


def resolve_z_factor(model, z_factor: int | None) -> int:
    """The z-factor to use: the caller's, checked against the model's training factor."""
    trained = model_z_factor(model)
    if z_factor is None:
        if trained is None:
            raise ValueError(f"model {model.name!r} does not say which z-factor it was trained for — "
                             "pass it (--z-factor F)")
        return trained
    z_factor = int(z_factor)
    if trained is not None and z_factor != trained:
        raise ValueError(f"model {model.name!r} generates {trained - 1} slices per gap (z-factor {trained}), "
                         f"not z-factor {z_factor} — pass --z-factor {trained} or train a model for {z_factor}")
    return z_factor


class FoldedNetwork:
    """A 3D UNet seen by the 2D tiled machinery: (B, C*D, H, W) in, (B, D, H, W) out, so the
    sampler's state is the gap's block with depth as channels."""

    def __init__(self, network, depth: int):
        self.network, self.depth = network, depth
        self.aleatoric = False

    def __call__(self, x, noise_level, slice_index=None):
        b, cd, h, w = x.shape
        out = self.network(x.reshape(b, cd // self.depth, self.depth, h, w), noise_level)
        return out[:, :1].reshape(b, self.depth, h, w)


@dataclass
class _Gap:
    samples: np.ndarray  # (f-1, S, Y, X) float32, normalised
    first: np.ndarray  # (f-1, S, Y, X): the denoiser's estimate at the noisiest level
    logvar: np.ndarray | None  # (f-1, S, Y, X) or None

    def mean(self, estimate: str) -> np.ndarray:
        """(f-1, Y, X): the mean of the samples, or of the posterior-mean estimates."""
        return (self.samples if estimate == "sample_mean" else self.first).mean(axis=1)


def _sample_gap_2d(model, lower, upper, settings, f, gap, seed, origin, dev, on_batch, cancel) -> _Gap:
    import torch

    from ..restore import sample_plane

    s = settings.samples
    cond = torch.from_numpy(np.stack([upper, lower]))[None].to(dev)  # vEMDiffuse: [slice i+1, slice i]
    streams = [(gap, k, j) for k in range(1, f) for j in range(s)]
    index = torch.tensor([k - 1 for k in range(1, f) for _ in range(s)], dtype=torch.float32, device=dev)
    xs, logvar, first = sample_plane(model, cond, settings, seed=seed, streams=streams, slice_index=index,
                                     origin=origin, on_batch=on_batch, cancel=cancel, with_mean=True)
    h, w = lower.shape

    def per_slice(t):
        return None if t is None else t[:, 0].float().cpu().numpy().reshape(f - 1, s, h, w)

    ensemble = settings.ensemble if settings.estimate == "posterior_mean" else 1
    if ensemble > 1:
        first = _gap_ensemble_mean(model, lower, upper, first.reshape(f - 1, s, 1, h, w).mean(1), settings,
                                   f, gap, seed, dev, on_batch, cancel)
        return _Gap(per_slice(xs), first[:, 0].float().cpu().numpy()[:, None], per_slice(logvar))
    return _Gap(per_slice(xs), per_slice(first), per_slice(logvar))


def ensemble_member(m: int) -> tuple[int, bool]:
    """The m-th view of a gap: (lateral rotation 0-3, z reversed). Even members keep the cutting
    direction, odd ones swap the two acquired slices, so any E >= 2 averages both directions."""
    return m // 2, bool(m % 2)


def _gap_ensemble_mean(model, lower, upper, first, settings, f, gap, seed, dev, on_batch, cancel):
    """The posterior-mean estimate of a gap's f-1 slices averaged over ``settings.ensemble``
    views (lateral rotations, and the gap seen from the other side): the network is neither
    rotation- nor direction-equivariant, and its errors partly cancel."""
    import torch

    from ..restore import dihedral, sample_plane

    one_level = replace(settings, steps=1, samples=1)
    estimates = [first]
    for m in range(1, settings.ensemble):
        turn, reverse = ensemble_member(m)
        below, above = (upper, lower) if reverse else (lower, upper)
        cond = dihedral(torch.from_numpy(np.stack([above, below]))[None].to(dev), turn)
        # row k-1 is the slice at k/f above ``lower`` in both views: f-k above ``upper`` when reversed
        index = torch.tensor([(f - k if reverse else k) - 1 for k in range(1, f)], dtype=torch.float32, device=dev)
        out = sample_plane(model, cond, one_level, seed=seed, streams=[(gap, 2 ** 20 + m, k) for k in range(1, f)],
                           slice_index=index, on_batch=on_batch, cancel=cancel, with_mean=True)[2]
        estimates.append(dihedral(out, turn, inverse=True))
    return torch.stack(estimates).mean(0)


def _sample_gap_3d(model, lower, upper, settings, f, gap, seed, origin, dev, on_batch, cancel) -> _Gap:
    import torch
    import torch.nn.functional as F

    from ..diffusion.denoiser import Denoiser
    from ..diffusion.samplers import sample
    from ..noise import positional_noise
    from ..restore import inference_autocast
    from ..tiling import TiledDenoiser, TileGrid

    net = model.network
    multiple = net.downsample_factor
    block = _interpolated_block(lower, upper, f, multiple)
    depth = len(block)
    h, w = lower.shape
    grid = TileGrid.plan((h, w), settings.tile, settings.overlap, multiple, origin)
    ph, pw = grid.padded_shape
    cond = torch.from_numpy(block)[None].to(dev)
    if (ph, pw) != (h, w):
        cond = F.pad(cond, (0, pw - w, 0, ph - h), mode="reflect" if ph - h < h and pw - w < w else "replicate")
    s = settings.samples

    def noise(step: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([
            np.stack([positional_noise(origin, (ph, pw), seed, (gap, j, d, step)) for d in range(depth)])
            for j in range(s)])).to(dev)

    base = model.denoiser()
    denoiser = Denoiser(FoldedNetwork(net, depth), base.parameterization, base.clip)
    tiled = TiledDenoiser(denoiser, cond, grid, settings.batch_size,
                          autocast=lambda: inference_autocast(dev, settings.precision),
                          on_batch=on_batch, cancel=cancel)
    sigmas = settings.sigmas().to(dev)
    x = sample(settings.sampler, tiled, noise(0) * float(sigmas[0]), sigmas, lambda i: noise(i + 1),
               **settings.sampler_options)

    def per_slice(t):
        return t[:, 1:f, :h, :w].float().cpu().numpy().transpose(1, 0, 2, 3)  # (f-1, S, H, W)

    return _Gap(per_slice(x), per_slice(tiled.first_x0), None)


def reconstruct_gaps(volume, model, *, z_factor: int | None = None, samples: int | None = None,
                     steps: int | None = None, sampler: str | None = None, grid: str | None = None,
                     tile: int | None = None, overlap: int | None = None, batch_size: int | None = None,
                     device: str = "auto", seed: int = 0, progress: Callable[[int, int], None] | None = None,
                     cancel: Callable[[], bool] | None = None, threshold: float | None = None,
                     gaps: Sequence[int] | None = None, normalizer=None,
                     origin: tuple[int, int, int] = (0, 0, 0),
                     estimate: str | None = None, ensemble: int | None = None) -> Iterator[tuple[int, object]]:
    """Generate the slices between acquired slices ``gap`` and ``gap + 1``, yielding
    ``(gap, RestoreResult)`` per gap: ``mean`` (f-1, Y, X) in the volume's dtype, ``std`` over
    samples and ``aleatoric`` std (float32, intensity units, or None), ``mask`` (uint8).

    ``volume`` is (Z, Y, X): numpy, dask or zarr, read two slices at a time; each plane goes
    through the tiled sampler of the restore core. Arguments as :func:`restore.restore`;
    ``estimate`` (default: the card's) is ``sample_mean`` or ``posterior_mean`` (see
    :class:`restore.Settings`); ``ensemble`` (posterior mean, 2D network) averages E views of
    each gap: lateral rotations and the gap seen from the other side (:func:`ensemble_member`); ``gaps`` restricts the work to some gaps; ``origin`` (z, y, x)
    and ``normalizer`` place a window of a larger volume in it (streaming), so the window draws
    the noise the whole volume would.
    """
    from ..device import resolve_device
    from ..restore import RestoreResult, Settings, _fit_normalizer, _prepare, view_tiles
    from ..normalize import to_dtype
    from ..tiling import TileGrid
    from ..uncertainty import aleatoric_std, reliability_mask, sample_std

    dev = resolve_device(device)
    model = _prepare(model, dev, "isotropic")
    f = resolve_z_factor(model, z_factor)
    check_volume(volume, f)
    three_d = getattr(model.network, "dims", 2) == 3
    settings = Settings.for_model(model, dev, samples=samples, steps=steps, sampler=sampler, grid=grid,
                                  tile=tile, overlap=overlap, batch_size=batch_size, estimate=estimate,
                                  ensemble=ensemble)
    normalizer = normalizer if normalizer is not None else _fit_normalizer(volume, model)
    span = normalizer.hi - normalizer.lo
    thr = float(threshold if threshold is not None else model.uncertainty.get("threshold", np.inf))
    todo = list(gaps if gaps is not None else range(volume.shape[0] - 1))
    probe = TileGrid.plan(volume.shape[-2:], settings.tile, settings.overlap, model.network.downsample_factor,
                          tuple(origin[1:]))
    states = settings.samples * (1 if three_d else f - 1)
    per_gap = len(probe.windows()) * states * settings.evaluations
    ensemble = 1 if three_d or settings.estimate != "posterior_mean" else settings.ensemble
    per_gap += (f - 1) * sum(view_tiles(volume.shape[-2:], ensemble_member(m)[0], settings,
                                        model.network.downsample_factor) for m in range(1, ensemble))
    total = per_gap * len(todo)
    done = [0]

    def on_batch(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    sample_gap = _sample_gap_3d if three_d else _sample_gap_2d
    cache: dict[int, np.ndarray] = {}  # the last planes read: each slice is read once in order

    def plane(z: int) -> np.ndarray:
        if z not in cache:
            for old in [k for k in cache if k < z - 1]:
                del cache[old]
            cache[z] = normalizer(np.asarray(volume[z]))
        return cache[z]

    for gap in todo:
        t0 = time.perf_counter()
        lower, upper = plane(gap), plane(gap + 1)
        g = sample_gap(model, lower, upper, settings, f, origin[0] + gap, seed, tuple(origin[1:]), dev,
                       on_batch, cancel)
        mean = to_dtype(normalizer.inverse(g.mean(settings.estimate)), volume.dtype)
        std = None
        if settings.samples > 1:
            std = np.stack([sample_std(s) for s in g.samples]) * (span / 2)
        ale = None if g.logvar is None else np.stack([aleatoric_std(lv) for lv in g.logvar]) * (span / 2)
        basis = std if std is not None else ale
        mask = None if basis is None or not np.isfinite(thr) else reliability_mask(basis, span, thr)
        info = {"gap": gap, "z_factor": f, "seconds": time.perf_counter() - t0, "device": str(dev),
                "network": "3d" if three_d else "2d", "samples": settings.samples, "steps": settings.steps,
                "sampler": settings.sampler, "estimate": settings.estimate, "ensemble": ensemble,
                "evaluations": settings.evaluations, "tile": settings.tile,
                "normalizer": (normalizer.lo, normalizer.hi), "threshold": thr, "model": model.name}
        yield gap, RestoreResult(mean, std, ale, mask, info)


def reconstruct(volume, model, **kwargs):
    """The whole isotropic volume as one RestoreResult: ``mean`` ((n-1)*f+1, Y, X) in the
    volume's dtype with acquired slice i unchanged at output slice i*f; ``std`` / ``aleatoric``
    / ``mask`` per voxel, zero at the acquired slices. ``info["voxel_scale"]`` is (1/f, 1, 1):
    multiply the input's voxel size by it. On cancel, :class:`Cancelled` carries the finished
    leading part in ``partial``."""
    from ..tiling import Cancelled

    t0 = time.perf_counter()
    n = volume.shape[0]
    parts: list = []
    try:
        for gap, res in reconstruct_gaps(volume, model, **kwargs):
            parts.append(res)
    except Cancelled as exc:
        exc.partial = _assemble(volume, parts, t0) if parts else None
        raise
    if not parts:  # no gap to fill is still an answer: the volume itself
        raise ValueError("nothing to reconstruct: the volume needs at least 2 slices")
    result = _assemble(volume, parts, t0)
    assert result.mean.shape[0] == output_depth(n, result.info["z_factor"])
    return result


def _assemble(volume, parts: list, t0: float):
    """Acquired slices 0..len(parts) interleaved with the generated ones."""
    from ..restore import RestoreResult

    f = parts[0].info["z_factor"]
    n_out = output_depth(len(parts) + 1, f)
    acquired = [np.asarray(volume[i]) for i in range(len(parts) + 1)]

    def interleave(name: str, dtype, at_acquired):
        values = [getattr(p, name) for p in parts]
        if any(v is None for v in values):
            return None
        out = np.empty((n_out, *acquired[0].shape), dtype=dtype)
        for i, plane in enumerate(acquired):
            out[i * f] = at_acquired(plane)
        for i, v in enumerate(values):
            out[i * f + 1:(i + 1) * f] = v
        return out

    mean = interleave("mean", volume.dtype, lambda plane: plane)
    zeros = lambda plane: 0  # noqa: E731 - acquired voxels are measured, not generated
    std = interleave("std", np.float32, zeros)
    ale = interleave("aleatoric", np.float32, zeros)
    mask = interleave("mask", np.uint8, zeros)
    info = dict(parts[0].info)
    info.pop("gap", None)
    info.update(seconds=time.perf_counter() - t0, gaps=len(parts), voxel_scale=(1.0 / f, 1.0, 1.0),
                acquired=[i * f for i in range(len(acquired))])
    return RestoreResult(mean, std, ale, mask, info)
