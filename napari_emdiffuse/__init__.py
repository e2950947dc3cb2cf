"""napari-emdiffuse: diffusion-model restoration of electron-microscopy images.

The compute core (networks, diffusion, tiling, uncertainty, training, I/O, CLI) imports neither
Qt nor napari; torch is imported only when a function that needs it is called.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_model", "restore", "restore_slices", "SamplingOptions", "__version__"]
_LAZY = {"load_model": "loading", "restore": "api", "restore_slices": "api", "SamplingOptions": "requests"}


def __getattr__(name):  # lazy: importing the package (as napari does at start-up) stays cheap
    if name not in _LAZY:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
