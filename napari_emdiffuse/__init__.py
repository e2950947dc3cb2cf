"""napari-emdiffuse: diffusion-model restoration of electron-microscopy images.

The compute core (networks, diffusion, tiling, uncertainty, training, I/O, CLI) imports neither
Qt nor napari; torch is imported only when a function that needs it is called.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_model", "restore", "__version__"]


def __getattr__(name):  # lazy: importing the package (as napari does at start-up) stays cheap
    if name == "load_model":
        from .loading import load_model

        return load_model
    if name == "restore":
        from .restore import restore

        return restore
    raise AttributeError(name)
