"""Real EM crops shipped with the package (see PROVENANCE.txt): no download needed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SEM_NOISY = HERE / "pair53_noisy_dwell4us.tif"
SEM_CLEAN = HERE / "pair53_clean_dwell36us.tif"


def load_pair() -> tuple[np.ndarray, np.ndarray]:
    """The real SEM pair: (4 us noisy, 36 us clean), 768 x 768 uint8."""
    import tifffile

    return tifffile.imread(SEM_NOISY), tifffile.imread(SEM_CLEAN)
