"""How well the two acquisitions of the demo pair (4 us input, 36 us reference) line up, region by
region of the protocol, and how much of a measured error the reference's own noise makes: the two
things that could blur the demo map's scores on the real pair. Model-free; no restoration is scored.

    python benchmarks/pair_registration.py

Shifts: phase correlation (1/20 px steps) of 64 x 64 windows (32 px apart in y, 64 in x) of both
images, each smoothed 1 px. Reference noise: the acquisition's noise model fitted on the train
rows (`evaluation.noise_model`), scaled to the 36 us dwell (shot noise: variance x 4/36).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.registration import phase_cross_correlation

from _common import header
from napari_emdiffuse import evaluation as ev
from napari_emdiffuse.sample_data import load_pair

WINDOW = 64


def window_shifts(noisy, clean) -> np.ndarray:
    """(windows, 2): the y, x shift of the reference against the input in each window."""
    a, b = (gaussian_filter(np.asarray(x, dtype=np.float64), 1.0) for x in (clean, noisy))
    return np.array([phase_cross_correlation(a[y:y + WINDOW, x:x + WINDOW], b[y:y + WINDOW, x:x + WINDOW],
                                             upsample_factor=20)[0]
                     for y in range(0, a.shape[0] - WINDOW + 1, WINDOW // 2)
                     for x in range(0, a.shape[1] - WINDOW + 1, WINDOW)])


def main() -> None:
    header("registration of the demo pair and the reference's noise share")
    noisy, clean = load_pair()
    for part in ("train", "val", "test"):
        rows = ev.rows_of("demo-denoise", part)
        shifts = window_shifts(noisy[rows], clean[rows])
        rms, largest = np.sqrt((shifts ** 2).mean(axis=0)), np.abs(shifts).max(axis=0)
        print(f"{part} rows {rows.start}-{rows.stop - 1}: {len(shifts)} windows, RMS shift y {rms[0]:.3f} x {rms[1]:.3f} px, "
              f"largest y {largest[0]:.2f} x {largest[1]:.2f} px")
    train = ev.rows_of("demo-denoise", "train")
    noise = ev.noise_model(noisy[train], clean[train])
    reference_std = noise["std"] * np.sqrt(ev.REFERENCE_NOISE_SHARE)
    print(f"4 us noise {noise['std']:.2f} grey levels RMS; 36 us reference's {reference_std:.2f}: "
          f"{reference_std ** 2:.1f} of a squared error (e.g. {reference_std ** 2 / 5.0 ** 2:.0%} of a 5.0 RMS block error)")


if __name__ == "__main__":
    main()
