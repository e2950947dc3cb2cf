"""Evented state of the restore widget, kept apart from the widgets that show it."""
from __future__ import annotations

from dataclasses import dataclass

from psygnal import evented

from ..tasks import all_tasks

MODEL_DEFAULT = "model default"  # sampler choice that keeps the model card's sampler
SCOPES = ("current slice", "whole stack")


def task_choices(widget: str) -> list[tuple[str, str]]:
    """(label, task) of the registered tasks a widget runs (restore or isotropic)."""
    return [(task.label, task.name) for task in all_tasks() if task.widget == widget]


@evented
@dataclass
class RestoreSettings:
    """What to restore and how. 0 (or MODEL_DEFAULT) means "the model card's default"."""

    task: str = "denoise"
    model: str = ""  # preset name, checkpoint / card file, or training run folder
    samples: int = 0
    steps: int = 0
    sampler: str = MODEL_DEFAULT
    estimate: str = MODEL_DEFAULT  # sample_mean or posterior_mean (the restored image)
    ensemble: int = 0  # posterior_mean: rotations/flips averaged (1-8)
    tile: int = 0
    device: str = "auto"
    scope: str = "whole stack"
    seed: int = 0
    store: str = ""  # OME-Zarr store of a streamed (zarr/dask layer) result; "": a scratch folder


@evented
@dataclass
class IsotropicSettings:
    """0 means "the model card's default"."""

    model: str = ""
    z_factor: int = 0
    samples: int = 0
    steps: int = 0
    ensemble: int = 0  # views of each gap averaged (rotations, both z directions)
    device: str = "auto"
    seed: int = 0
    store: str = ""  # OME-Zarr store of a streamed (zarr/dask layer) result; "": a scratch folder


@evented
@dataclass
class RunState:
    """Progress of the current restore: tile-steps done of total, and a one-line status."""

    running: bool = False
    cancelling: bool = False
    done: int = 0
    total: int = 0
    status: str = ""

    def update(self, **changes) -> None:
        for name, value in changes.items():
            setattr(self, name, value)


@evented
@dataclass
class UncertaintyView:
    """How the uncertainty of the results is shown: threshold (in the model's [-1, 1] units),
    overlay toggles, and in view the unreliable fraction and the predicted error's RMS in grey
    levels (None: nothing to show)."""

    threshold: float = 0.1
    show_uncertainty: bool = True
    show_std: bool = False
    show_aleatoric: bool = False
    show_mask: bool = True
    unreliable_fraction: float | None = None
    predicted_error: float | None = None


def bind(widget, state, name: str) -> None:
    """Two-way binding of a magicgui value widget and one field of an evented dataclass."""
    widget.value = getattr(state, name)
    widget.changed.connect(lambda value: setattr(state, name, value))
    getattr(state.events, name).connect(lambda value: setattr(widget, "value", value))
