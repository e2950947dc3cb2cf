"""What a user asks of a restore, as plain data (no torch: the widgets build these before torch is
imported): :class:`SamplingOptions` and :class:`RestoreRequest`."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Sequence

# sample_mean: the mean of the K samples (EMDiffuse); posterior_mean: the denoiser's estimate at
# the noisiest level, E[x0 | condition], averaged over the K starts. Both estimate the posterior
# mean; the second has no sampling noise (Rao-Blackwellised).
ESTIMATES = ("sample_mean", "posterior_mean")


@dataclass(frozen=True)
class SamplingOptions:
    """The sampling choices every restoring entry point takes (CLI flags, widget fields,
    :func:`napari_emdiffuse.restore`): None keeps the model card's value."""

    samples: int | None = None  # diffusion samples per pixel; 2 or more give the sample spread
    steps: int | None = None  # sampler steps (noise levels) per sample
    sampler: str | None = None  # ddpm, ddim, dpmpp_2m, heun, heun_churn
    grid: str | None = None  # noise-level grid: karras, loglinear, respaced
    estimate: str | None = None  # sample_mean or posterior_mean: the restored image
    ensemble: int | None = None  # posterior mean averaged over this many views (rotations/flips)
    tile: int | None = None  # tile edge in pixels
    overlap: int | None = None  # tile overlap in pixels
    batch_size: int | None = None  # tiles per network batch
    precision: str | None = None  # auto, fp32 or bf16
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    seed: int = 0  # the same seed gives the same result, whatever the tiling or chunking

    @classmethod
    def from_kwargs(cls, **kwargs) -> "SamplingOptions":
        """The options among ``kwargs`` (the rest is refused: a typo must not pass silently)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown sampling option(s) {', '.join(unknown)}: use {', '.join(sorted(names))}")
        return cls(**{k: v for k, v in kwargs.items() if v is not None or k not in ("device", "seed")})

    def with_(self, **changes) -> "SamplingOptions":
        return replace(self, **changes)


@dataclass(frozen=True)
class RestoreRequest:
    """A restore as the user asked for it: a task, a model (preset name, card, run folder or
    checkpoint; None: the task's bundled default), sampling options, the task's parameters (e.g.
    ``z_factor``), a reliability threshold (None: the card's) and the units to restore (None: all)."""

    task: str
    model: str | None = None
    options: SamplingOptions = field(default_factory=SamplingOptions)
    params: dict = field(default_factory=dict)
    threshold: float | None = None
    units: Sequence[int] | None = None
