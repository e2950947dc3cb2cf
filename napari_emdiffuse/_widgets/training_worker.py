"""The training job run by the Training widget's worker thread, as a generator of typed updates:
one Started (with the trainer, so Save can ask it for a checkpoint), a TrainUpdate per step, one
Finished. Stop sets an event the trainer polls between steps; every run ends with a checkpoint."""
from __future__ import annotations

import gc
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRequest:
    task: str  # denoise | superres | isotropic
    run_dir: str
    inputs: dict  # the task's data builder arguments (arrays or paths)
    preset: str = "tiny"
    base: str | None = None  # the model to fine-tune
    resume: bool = False
    settings: dict = field(default_factory=dict)  # TrainConfig fields and patch


@dataclass(frozen=True)
class Started:
    trainer: Any  # training.trainer.Trainer
    step: int
    total: int
    history: tuple = ()
    aligned: int = 0  # misregistered images aligned before training


@dataclass(frozen=True)
class Finished:
    step: int = 0
    total: int = 0
    stopped: bool = False
    error: str | None = None  # one line that says what to do
    run_dir: str = ""


def error_message(error: BaseException) -> str:
    """One line for the user. Our own errors already say what to do; others get a hint."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return "out of memory: lower the batch size or the patch size, or train on the CPU"
    if isinstance(error, (ValueError, OSError, FloatingPointError)):
        return str(error)
    logger.exception("training failed", exc_info=error)
    return f"training failed ({type(error).__name__}: {error}) — the traceback is in the terminal"


def train_updates(request: TrainRequest, stop: threading.Event) -> Iterator:
    """Prepare the run (data, model, state) and train it, yielding Started, TrainUpdates, Finished."""
    from ..training import session

    trainer = None
    try:
        trainer, data = session.prepare(request.task, request.run_dir, request.inputs, preset=request.preset,
                                        base=request.base, resume=request.resume, settings=request.settings,
                                        should_stop=stop.is_set)
        yield Started(trainer, trainer.step, trainer.cfg.steps, tuple(trainer.history), data.aligned)
        yield from trainer.iterate()
        yield Finished(trainer.step, trainer.cfg.steps, stopped=trainer.step < trainer.cfg.steps,
                       run_dir=request.run_dir)
    except Exception as e:  # noqa: BLE001 - reported to the user, never lost in the thread
        step, total = (trainer.step, trainer.cfg.steps) if trainer is not None else (0, 0)
        yield Finished(step, total, error=error_message(e), run_dir=request.run_dir)


def registration_summary(noisy, clean) -> tuple[bool, str]:
    """Whether a noisy/clean pair is registered, and one line saying so (imports the core here,
    in the worker thread)."""
    from ..training.datasets import registration_summary as summary

    return summary(noisy, clean)


def probe_for_training():
    """What the widget offers (devices, presets), and every import training needs, done here in
    a worker: imported later, during a run, they would hold the GIL and stall the viewer."""
    from ._environment import probe

    env = probe()
    import scipy.ndimage  # noqa: F401
    import skimage.filters  # noqa: F401
    import skimage.registration  # noqa: F401
    import torch._dynamo  # noqa: F401 - torch.optim imports it on the first optimiser

    from .. import io  # noqa: F401 - tifffile and zarr
    from ..training import session  # noqa: F401

    # A full garbage collection over everything napari and torch have built takes a second or
    # more and stops every thread, the viewer's too; what exists now lives as long as the app,
    # so later collections can skip it (reference counting still frees it).
    gc.freeze()
    return env
