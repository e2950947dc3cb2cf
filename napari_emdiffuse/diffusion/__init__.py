"""Conditional diffusion: schedules, parameterisations, samplers, losses and EMA (pure torch)."""
from .denoiser import Denoiser
from .samplers import SAMPLERS, sample
from .schedules import sampling_sigmas, schedule_sigmas

__all__ = ["Denoiser", "SAMPLERS", "sample", "sampling_sigmas", "schedule_sigmas"]
