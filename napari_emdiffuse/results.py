"""What a restore produces: :class:`RestoreResult` and the one table of its output fields
(:data:`OUTPUTS`: file suffix, data type, how napari shows it, its value at acquired slices),
which the CLI, the streamed result store and the widgets all read. numpy only (no torch)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MASK_RGBA = (1.0, 0.15, 0.1, 1.0)  # the reliability mask's colour: napari layers and OME-Zarr image-label


def _split_extension(path: Path) -> tuple[str, str]:
    """``out.ome.tif`` -> (``out``, ``.ome.tif``)."""
    suffixes = path.suffixes[-2:] if len(path.suffixes) >= 2 and path.suffixes[-2].lower() == ".ome" else path.suffixes[-1:]
    ext = "".join(suffixes)
    return path.name[: len(path.name) - len(ext)], ext


def sampling_summary(info: dict) -> str:
    """``1 sample x 1 step (dpmpp_2m)`` from a result's info: how it was sampled, for a status line."""
    samples, steps = int(info["samples"]), int(info["steps"])
    return (f"{samples} sample{'s' * (samples != 1)} x {steps} step{'s' * (steps != 1)} "
            f"({info['sampler']}{', ' + str(info['device']) if info.get('device') else ''})")


def sibling_path(path: str | os.PathLike, tag: str) -> Path:
    """``out.tif`` -> ``out_std.tif`` (``out.ome.tif`` -> ``out_std.ome.tif``)."""
    path = Path(path)
    stem, ext = _split_extension(path)
    return path.with_name(f"{stem}_{tag}{ext}")


@dataclass
class RestoreResult:
    """``mean`` has the input's dtype (the output's shape); ``std`` / ``aleatoric`` are float32
    standard deviations in input intensity units (None when unavailable); ``mask`` is 1 where the
    uncertainty exceeds the threshold; ``uncertainty`` is the predicted RMS error per pixel in
    intensity units (float32; :func:`~napari_emdiffuse.uncertainty.predicted_error`); ``info``
    says how it was made."""

    mean: np.ndarray
    std: np.ndarray | None = None
    aleatoric: np.ndarray | None = None
    mask: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def fields(self) -> tuple[str, ...]:
        """The output fields this result holds, in table order."""
        return tuple(o.field for o in OUTPUTS if getattr(self, o.field) is not None)


@dataclass(frozen=True)
class Output:
    """One output field of a restore."""

    field: str  # RestoreResult attribute
    tag: str | None  # file: OUTPUT_<tag> next to OUTPUT (None: OUTPUT itself)
    dtype: str | None  # stored data type (None: the input's)
    role: str  # napari result-layer role
    layer: str  # napari layer type: image or labels
    label: str  # layer name after the source's name
    colour: tuple[float, float, float] | None  # overlays fade in with the value in this colour
    shown: bool  # visible by default
    at_acquired: str  # value at slices passed through from the input: "input" or "zero"
    description: str


OUTPUTS: tuple[Output, ...] = (
    Output("mean", None, None, "restored", "image", "restored", None, True, "input",
           "the restored image, in the input's data type"),
    Output("std", "std", "float32", "std", "image", "uncertainty (std)", (1.0, 0.8, 0.0), False, "zero",
           "per-pixel standard deviation over the diffusion samples (2 or more samples)"),
    Output("aleatoric", "aleatoric", "float32", "aleatoric", "image", "aleatoric (std)", (0.0, 0.8, 1.0), False,
           "zero", "per-pixel standard deviation from the model's aleatoric head"),
    Output("mask", "mask", "uint8", "mask", "labels", "unreliable", None, True, "zero",
           "1 where the uncertainty is above the model card's calibrated threshold"),
    Output("uncertainty", "uncertainty", "float32", "uncertainty", "image", "predicted error", (1.0, 0.35, 0.0),
           True, "zero", "predicted RMS error per pixel in the output's intensity units, calibrated on validation data"),
)
BY_FIELD = {o.field: o for o in OUTPUTS}
BY_ROLE = {o.role: o for o in OUTPUTS}
FIELDS = tuple(BY_FIELD)


def output_dtype(field_name: str, input_dtype) -> np.dtype:
    dtype = BY_FIELD[field_name].dtype
    return np.dtype(input_dtype if dtype is None else dtype)


def output_paths(output: str | os.PathLike, fields=FIELDS) -> dict[str, Path]:
    """OUTPUT and its siblings (OUTPUT_std, ...) by field: the names every route writes."""
    output = Path(output)
    return {f: output if BY_FIELD[f].tag is None else sibling_path(output, BY_FIELD[f].tag) for f in fields}


def output_of(path: str | os.PathLike, field_name: str) -> Path:
    """The OUTPUT a file holding ``field_name`` belongs to: ``out_std.tif`` -> ``out.tif`` (the
    inverse of :func:`output_paths`)."""
    path = Path(path)
    tag = BY_FIELD[field_name].tag
    stem, ext = _split_extension(path)
    if tag is None or not stem.endswith(f"_{tag}"):
        return path
    return path.with_name(stem[: -len(tag) - 1] + ext)


def describe_file(field_name: str, output: str | os.PathLike, task: str) -> dict:
    """What the file of ``field_name`` says about itself (``io.write_image``'s ``about`` and
    ``label``): the field and task it holds, and for the mask, OME-Zarr ``image-label``
    metadata (its colour and name, and OUTPUT, the image it labels)."""
    row = BY_FIELD[field_name]
    described = {"about": {"field": field_name, "task": task}}
    if row.layer == "labels":
        described["label"] = {"colors": [{"label-value": 1, "rgba": [round(255 * c) for c in MASK_RGBA]}],
                              "properties": [{"label-value": 1, "name": row.label}],
                              "source": {"image": f"../{Path(output).name}"}}
    return described


def acquired_value(field_name: str, plane: np.ndarray) -> np.ndarray:
    """A field's value at a slice passed through unchanged from the input (measured, not generated)."""
    if BY_FIELD[field_name].at_acquired == "input":
        return plane
    return np.zeros(plane.shape, dtype=output_dtype(field_name, plane.dtype))
