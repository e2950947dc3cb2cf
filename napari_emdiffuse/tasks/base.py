"""What a restoration task declares, for the engine, the CLI, the widgets, training and the model
cards: the plug-in interface. A task says what differs between tasks (input and output geometry,
how the network is conditioned, its ensemble views, training pairs, its CLI options); the engine
(:mod:`napari_emdiffuse.engine`) runs the skeleton shared by all (normalise, plan tiles, sample,
ensemble, uncertainty, assemble).

The base class is a per-slice 2D task (denoising is nothing more); subclasses change what they
need. Tasks handle numpy arrays only, so the registry stays light (the widgets read it at start,
before torch is imported).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from ..calibration import Calibration
from ..results import FIELDS, RestoreResult

ENSEMBLE_STREAM = 2 ** 20  # noise streams of ensemble views start here, apart from the samples'


@dataclass(frozen=True)
class Geometry:
    """How a task's output grid relates to its input: ``scale`` output pixels per input pixel in Y
    and X, ``z_factor`` output slices per input slice spacing."""

    scale: int = 1
    z_factor: int = 1

    def voxel_scale(self, ndim: int) -> tuple[float, ...]:
        """Output voxel size / input voxel size, per axis (z, y, x or y, x)."""
        return (1.0 / self.z_factor, 1.0 / self.scale, 1.0 / self.scale)[-ndim:]

    def output_voxel_size(self, voxel_size) -> tuple[float, ...] | None:
        """The output's voxel size from the input's (z, y, x or y, x); None when it has none."""
        if voxel_size is None or len(voxel_size) not in (2, 3):
            return None
        return tuple(float(v) * f for v, f in zip(voxel_size, self.voxel_scale(len(voxel_size))))

    def output_calibration(self, calibration: Calibration | None, ndim: int) -> Calibration:
        """The output's calibration from the input's (None: unit-less pixels): voxel sizes
        scaled, units kept; the first output pixel's centre moves by half the change of the
        pixel size in Y and X (its box starts where the input's does), not in Z (the first
        output slice is the first acquired one)."""
        calibration = (calibration or Calibration.pixels(ndim)).fit(ndim)
        voxel = self.output_voxel_size(calibration.voxel_size)
        shift = [0.0 if axis == ndim - 3 else (out - v) / 2
                 for axis, (out, v) in enumerate(zip(voxel, calibration.voxel_size))]
        return calibration.with_(voxel_size=voxel, translation=[t + d for t, d in zip(calibration.translation, shift)])


@dataclass
class Unit:
    """One sampler run: a normalised condition and the states drawn from it.

    ``condition`` (1 or B, C, H, W) float32 is on the output grid; ``streams`` has one noise
    stream per state (states are sampled together, in batched tiles); ``planes`` is the number
    of output planes the unit yields. A 3D network sees a block through ``network`` (a wrapper of
    the model's network) with ``channels`` noise channels per state, and ``split`` turns the
    final states (B, channels, H, W) into (planes, samples, H, W); by default each state is one
    channel and the states are the planes' samples in order. ``turn`` is the dihedral transform
    (0-7) of an ensemble view, undone on its estimate."""

    key: int  # the slice or gap in the whole volume (noise streams are seeded by it)
    condition: np.ndarray
    streams: list[tuple[int, ...]]
    planes: int = 1
    slice_index: np.ndarray | None = None
    channels: int = 1
    network: Callable | None = None
    split: Callable | None = None
    turn: int = 0


def dihedral(a, k: int, inverse: bool = False):
    """The k-th of the 8 rotations/flips of the last two axes (numpy), or its inverse."""
    rot, flip = k % 4, k >= 4
    if inverse:
        return np.rot90(a[..., ::-1] if flip else a, -rot, axes=(-2, -1))
    a = np.rot90(a, rot, axes=(-2, -1))
    return a[..., ::-1] if flip else a


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


class Task:
    """A per-slice 2D restoration task; subclasses override what differs."""

    name: str = ""  # the model cards' ``task`` and the CLI subcommand
    label: str = ""  # shown in the widgets
    widget: str = "restore"  # the widget that runs it: restore (per slice) or isotropic (volumes)
    default_model: str | None = None  # the bundled preset the CLI uses without --model
    summary: str = ""  # CLI help line
    description: str = ""  # CLI description
    trained_description: str = ""  # a new model's card description
    unit_is_plane = True  # each unit yields one (Y, X) plane, not a stack of planes
    training_summary: str = ""  # ``emdiffuse train TASK`` help line
    training_description: str = ""
    training_inputs: tuple[tuple[str, str], ...] = ()  # (data-builder key, label); () = not trainable
    training_options: tuple[str, ...] = ()  # the Training widget's options that apply

    # ---- geometry -------------------------------------------------------------------------------
    def geometry(self, model, **params) -> Geometry:
        """The task's geometry for this model and the user's task parameters (checked)."""
        return Geometry()

    def check_input(self, shape: Sequence[int], geometry: Geometry) -> None:
        if len(shape) not in (2, 3):
            raise ValueError(f"expected a 2D image or a stack (Z, Y, X), got {len(shape)} dimensions: "
                             "split channels or time points first")

    def output_shape(self, shape: Sequence[int], geometry: Geometry) -> tuple[int, ...]:
        s = geometry.scale
        return (*tuple(shape)[:-2], shape[-2] * s, shape[-1] * s)

    def units(self, shape: Sequence[int], geometry: Geometry) -> list[int]:
        """The units of an input: its slices (one unit for a 2D image)."""
        return [0] if len(shape) == 2 else list(range(shape[0]))

    def out_planes(self, unit: int, geometry: Geometry) -> range:
        """The output slices a unit fills."""
        return range(unit, unit + 1)

    def passthrough(self, out_z: range, geometry: Geometry) -> list[tuple[int, int]]:
        """(output slice, input slice) of output slices copied from the input unchanged."""
        return []

    # ---- conditioning ------------------------------------------------------------------------------
    def unit(self, model, read: Callable[[int], np.ndarray], index: int, geometry: Geometry, samples: int,
             origin_z: int = 0) -> Unit:
        """The unit ``index`` of the input; ``read(z)`` gives its normalised slice z and
        ``origin_z`` places the input in a larger volume (noise is seeded by global position)."""
        key = origin_z + index
        return Unit(key, self.condition(model, read(index), geometry), [(key, k) for k in range(samples)])

    def condition(self, model, plane: np.ndarray, geometry: Geometry) -> np.ndarray:
        """(1, C, H, W) network condition of one normalised plane."""
        return plane[None, None]

    def views(self, model, unit: Unit, count: int) -> Iterator[Unit]:
        """The ensemble's other views of a unit (one state each): rotations and flips."""
        for k in range(1, count):
            yield Unit(unit.key, np.ascontiguousarray(dihedral(unit.condition, k)),
                       [(unit.key, ENSEMBLE_STREAM + k)], turn=k)

    def view_shape(self, shape: tuple[int, int], view: int) -> tuple[int, int]:
        """The plane shape of ensemble view ``view`` (a quarter turn swaps height and width)."""
        return tuple(shape)[::-1] if view % 2 else tuple(shape)

    def info(self, model, unit: int, geometry: Geometry) -> dict:
        return {"z": unit}

    # ---- assembling a whole result -----------------------------------------------------------------
    def assemble(self, image, finished: list[tuple[int, RestoreResult]], geometry: Geometry) -> RestoreResult:
        """One result from the finished units, in order: a 2D image's one slice, or the stack of
        the finished slices (``info["slices"]``)."""
        results = [r for _, r in finished]
        if len(image.shape) == 2:
            return results[0]

        def stack(name):
            parts = [getattr(r, name) for r in results]
            return None if any(p is None for p in parts) else np.stack(parts)

        info = {k: v for k, v in results[0].info.items() if k != "z"}
        info["slices"] = [z for z, _ in finished]
        return RestoreResult(**{f: stack(f) for f in FIELDS}, info=info)

    # ---- command line ----------------------------------------------------------------------------
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The task's own options of ``emdiffuse TASK``."""

    def params(self, args: argparse.Namespace) -> dict:
        """The task parameters (``geometry`` keyword arguments) from parsed options."""
        return {}

    # ---- training ------------------------------------------------------------------------------------
    def add_training_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The data options of ``emdiffuse train TASK``."""

    def training_arguments(self, args: argparse.Namespace) -> dict:
        """The training-data builder's arguments from parsed options."""
        return {}

    def training_data(self, normalization: dict | None = None, **inputs):
        """A :class:`~napari_emdiffuse.training.datasets.TrainingData` from the task's inputs."""
        raise ValueError(f"the {self.name} task cannot be trained here — train a model elsewhere and load "
                         "its card")
