"""Real EM crops shipped with the package (see PROVENANCE.txt): no download needed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).parent
SEM_NOISY = HERE / "pair53_noisy_dwell4us.tif"
SEM_CLEAN = HERE / "pair53_clean_dwell36us.tif"


def load_pair() -> tuple[np.ndarray, np.ndarray]:
    """The real SEM pair: (4 us noisy, 36 us clean), 768 x 768 uint8."""
    return tifffile.imread(SEM_NOISY), tifffile.imread(SEM_CLEAN)


# Anisotropic serial-section TEM and isotropic FIB-SEM crops; voxel sizes (z, y, x) in nm.
SSTEM = HERE / "sstem_isbi2012_crop.tif"
SSTEM_VOXEL_NM = (50.0, 4.0, 4.0)
FIBSEM = HERE / "fibsem_flyem_crop.tif"
FIBSEM_VOXEL_NM = (10.0, 10.0, 10.0)


def load_sstem() -> np.ndarray:
    """ssTEM stack of Drosophila larva VNC (ISBI 2012): 30 x 256 x 256 uint8, voxel 50 x 4 x 4 nm."""
    return tifffile.imread(SSTEM)


def load_fibsem() -> np.ndarray:
    """FIB-SEM crop of Drosophila medulla (FlyEM): 64 x 128 x 128 uint8, isotropic 10 nm voxels."""
    return tifffile.imread(FIBSEM)
