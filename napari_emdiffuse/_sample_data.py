"""Sample-data contributions: the bundled real EM crops as napari layer data (no download)."""
from __future__ import annotations

from . import sample_data

NM = ("nm", "nm", "nm")


def sem_pair() -> list[tuple]:
    """The SEM pair; its pixel size is not stated at the source, so the layers stay in pixels."""
    noisy, clean = sample_data.load_pair()
    return [
        (clean, {"name": "SEM clean (36 us)", "visible": False}, "image"),
        (noisy, {"name": "SEM noisy (4 us)"}, "image"),
    ]


def sstem_stack() -> list[tuple]:
    return [(sample_data.load_sstem(), {"name": "ssTEM (ISBI 2012)", "scale": sample_data.SSTEM_VOXEL_NM,
                                        "units": NM}, "image")]


def fibsem_crop() -> list[tuple]:
    return [(sample_data.load_fibsem(), {"name": "FIB-SEM (FlyEM)", "scale": sample_data.FIBSEM_VOXEL_NM,
                                         "units": NM}, "image")]
