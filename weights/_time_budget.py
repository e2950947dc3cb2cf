"""Fit a training run into a wall-clock budget on a shared CPU: after a short measurement, the
run's total steps (and so its cosine learning-rate schedule) is set to what the budget allows."""
from __future__ import annotations

import time


class TimeBudget:
    def __init__(self, minutes: float, measure_steps: int = 40):
        self.seconds, self.measure_steps = minutes * 60, measure_steps
        self.t0 = time.perf_counter()

    def __call__(self, trainer, step: int) -> None:
        """Call after every step; once, after ``measure_steps``, shortens ``trainer.cfg.steps``."""
        if self.seconds and step == self.measure_steps:
            rate = step / (time.perf_counter() - self.t0)
            fitted = int(rate * self.seconds * 0.95)  # validations and checkpoints take the rest
            if fitted < trainer.cfg.steps:
                print(f"{rate:.2f} steps/s: {fitted} steps fit in the budget (asked {trainer.cfg.steps})", flush=True)
                trainer.cfg.steps = max(fitted, step + 1)
