"""How to sample: :class:`~napari_emdiffuse.requests.SamplingOptions` (as a user states them,
None: the model card's value) resolved against a model card and a device, and checked."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

from ..device import PRECISIONS
from ..diffusion.samplers import SAMPLERS, evaluations
from ..diffusion.schedules import sampling_sigmas
from ..requests import ESTIMATES, SamplingOptions

@dataclass
class Settings:
    """Sampling options resolved against a model card and a device, and checked."""

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
    estimate: str = "sample_mean"
    # posterior_mean only: also average the estimate over this many views (rotations/flips of the
    # image; for isotropic reconstruction also the gap seen from the other side), one extra
    # network evaluation per tile each.
    ensemble: int = 1
    precision: str = "auto"  # auto: bf16 on CUDA and on CPUs with native bf16 (device.inference_autocast)

    @classmethod
    def resolve(cls, model, device: torch.device, options: SamplingOptions | None = None) -> "Settings":
        options = options or SamplingOptions()
        overrides = {f.name: getattr(options, f.name) for f in fields(SamplingOptions)
                     if f.name not in ("device", "seed")}
        return cls.for_model(model, device, **overrides)

    @classmethod
    def for_model(cls, model, device: torch.device, **overrides) -> "Settings":
        d, t = model.diffusion, model.tile
        s = cls(sampler=d["sampler"], steps=int(d["steps"]), grid=d["grid"], samples=int(d["samples"]),
                sigma_min=float(d["sigma_min"]), sigma_max=float(d["sigma_max"]), rho=float(d.get("rho", 7.0)),
                tile=int(t["size"]), overlap=int(t["overlap"]),
                batch_size=16 if device.type == "cuda" else 4,
                sampler_options=dict(d.get("sampler_options") or {}), precision=str(d.get("precision", "auto")),
                estimate=str(d.get("estimate", "sample_mean")), ensemble=int(d.get("ensemble", 1)))
        s = replace(s, **{k: v for k, v in overrides.items() if v is not None})
        s.check()
        return s

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if not 1 <= self.ensemble <= 8:
            raise ValueError("ensemble must be between 1 and 8 (rotations and flips of the image)")
        if self.estimate not in ESTIMATES:
            raise ValueError(f"unknown estimate {self.estimate!r}: use one of {', '.join(ESTIMATES)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}: use one of {', '.join(SAMPLERS)}")
        if self.steps < 1 or self.samples < 1:
            raise ValueError("steps and samples must be at least 1")
        if self.tile < 16:
            raise ValueError("tile size must be at least 16 pixels")

    def sigmas(self) -> torch.Tensor:
        return sampling_sigmas(self.steps, self.grid, self.sigma_min, self.sigma_max, self.rho)

    @property
    def runs_samples(self) -> bool:
        """Whether the finished samples are used: as the estimate (sample mean) or for their
        spread (2 or more samples). When they are not, only the noisiest level is evaluated: the
        posterior-mean estimate and the aleatoric variance come from it, and every sampler's
        first evaluation is the same there (churn aside, which depends on the step count), so the
        other steps would change nothing."""
        churn = self.sampler == "heun_churn" or "churn" in self.sampler_options
        return self.estimate == "sample_mean" or self.samples > 1 or churn

    @property
    def steps_run(self) -> int:
        return self.steps if self.runs_samples else 1

    def sigmas_run(self) -> torch.Tensor:
        """The noise levels the sampler runs over: :meth:`sigmas`, or only its first level and
        0 when the samples are not used (:attr:`runs_samples`)."""
        sigmas = self.sigmas()
        return sigmas if self.runs_samples else sigmas[[0, -1]]

    @property
    def evaluations(self) -> int:
        """Network evaluations per state and tile."""
        return evaluations(self.sampler, self.steps) if self.runs_samples else 1

    @property
    def views(self) -> int:
        """Views averaged into the estimate (the ensemble applies to the posterior mean only)."""
        return self.ensemble if self.estimate == "posterior_mean" else 1
