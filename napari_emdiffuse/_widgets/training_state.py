"""Evented state of the Training widget, kept apart from the widgets that show it."""
from __future__ import annotations

from dataclasses import dataclass

from psygnal import evented

from ..tasks import all_tasks


def trainable_tasks() -> list[tuple[str, str]]:
    """(label, task) of the registered tasks that can be trained."""
    return [(task.label, task.name) for task in all_tasks() if task.training_inputs]

SOURCES = ("layers", "files")
NEW, FINE_TUNE = "new model", "fine-tune a model"


class _Updatable:
    def update(self, **changes) -> None:
        """Set several fields (each emits its own event)."""
        for name, value in changes.items():
            setattr(self, name, value)


@evented
@dataclass
class TrainingSettings(_Updatable):
    """What to train on and how. ``model`` is the model to fine-tune (when ``start`` says so)."""

    task: str = "denoise"
    source: str = "layers"
    register: bool = False  # align misregistered denoising pairs before training
    scale: int = 2  # super-resolution factor
    z_factor: int = 5  # isotropic: output slices per acquired slice spacing
    anisotropic: bool = False  # isotropic: the volume is the anisotropic one itself
    start: str = NEW
    preset: str = "tiny"
    model: str = ""
    patch: int = 96
    batch_size: int = 8
    steps: int = 2000
    lr: float = 2e-4
    device: str = "auto"
    seed: int = 0
    run_dir: str = ""


@evented
@dataclass
class TrainingRun(_Updatable):
    """The current run: steps done of total and a one-line status."""

    running: bool = False
    stopping: bool = False
    step: int = 0
    total: int = 0
    status: str = ""
