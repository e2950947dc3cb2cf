"""Checks made before a restore starts; each problem is one line that says what to do."""
from __future__ import annotations

from pathlib import Path

from napari.layers import Image, Labels

MODEL_SUFFIXES = (".pt", ".pth", ".ckpt", ".yaml", ".yml")


def layer_problem(layer) -> str | None:
    """Why ``layer`` cannot be restored, or None."""
    if layer is None:
        return "no image to restore: open one (File > Open) or a sample (File > Open Sample > EMDiffuse)"
    if isinstance(layer, Labels):
        return (f"'{layer.name}' is a Labels layer (a segmentation): choose the EM image layer, "
                "or convert it with right-click > Convert to Image")
    if not isinstance(layer, Image):
        return f"'{layer.name}' is a {layer.__class__.__name__} layer: choose an Image layer"
    if layer.rgb:
        return (f"'{layer.name}' is an RGB image: EM restoration works on grayscale, "
                "convert it first (e.g. right-click > Split RGB and use one channel)")
    if layer.ndim not in (2, 3):
        return (f"'{layer.name}' has {layer.ndim} dimensions: restore takes a 2D image or a Z stack, "
                "split channels or time points first (right-click > Split Stack)")
    return None


def model_problem(model: str, presets: list[str] | None) -> str | None:
    """Why the model choice cannot be loaded (cheap checks only; loading finds the rest).
    ``presets`` is None while the bundled presets are still being listed."""
    if not model:
        return "choose a model: a bundled preset, a checkpoint file (.pth / .pt / .yaml) or a training run folder"
    path = Path(model).expanduser()
    if path.is_dir() or path.is_file():
        return None
    if path.suffix.lower() in MODEL_SUFFIXES or len(path.parts) > 1:
        return f"the checkpoint {path} does not exist: choose an existing file or training run folder"
    if presets is not None and model not in presets:
        return f"no preset named '{model}': choose one from the list, a checkpoint file or a training run folder"
    return None
