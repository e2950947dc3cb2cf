"""Registration of noisy/clean pairs on the real SEM pair: misregistration is found and fixed."""
import re

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_emdiffuse.sample_data import load_pair
from napari_emdiffuse.training.datasets import MisregisteredError, denoise_data
from napari_emdiffuse.training.registration import check_pair, register_pair


@pytest.fixture(scope="module")
def pair():
    noisy, clean = load_pair()
    return noisy[:384, :384], clean[:384, :384]


def shifted(image, dy, dx):
    """The same field seen ``(dy, dx)`` pixels away (a crop of the full image, no wrap-around)."""
    _, clean = load_pair()
    return clean[dy:dy + image.shape[0], dx:dx + image.shape[1]]


def warped(image, amplitude=3.0):
    """A smooth non-rigid distortion of up to ``amplitude`` pixels, as a drifting scan gives."""
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]].astype(np.float32)
    coords = [rows + amplitude * np.sin(2 * np.pi * cols / 300), cols + amplitude * np.cos(2 * np.pi * rows / 250)]
    return np.clip(ndi.map_coordinates(image.astype(np.float32), coords, order=3, mode="nearest"), 0, 255).astype(np.uint8)


def test_the_real_pair_is_registered(pair):
    report = check_pair(*pair)
    assert report.registered
    assert np.hypot(*report.shift) < 0.5 and report.correlation > 0.98
    assert "registered" in report.message


def test_a_shifted_pair_is_reported_with_what_to_do(pair):
    noisy, clean = pair
    report = check_pair(noisy, shifted(clean, 7, 0))
    assert not report.registered
    assert report.shift[0] == pytest.approx(7, abs=0.3) and abs(report.shift[1]) < 0.3
    assert report.correlation < 0.8 < 0.98 < report.correlation_aligned
    assert re.search(r"offset from the input by \(7\.\d, -?0\.\d\) px", report.message)
    assert "Register the pair" in report.message and "--register" in report.message


def test_register_pair_restores_the_correlation(pair):
    noisy, clean = pair
    original = check_pair(noisy, clean).correlation
    fixed = register_pair(noisy, shifted(clean, 7, 0))
    assert fixed.after.registered
    assert fixed.after.correlation > original - 0.005
    assert fixed.target.dtype == clean.dtype and fixed.condition.shape == fixed.target.shape
    assert fixed.condition.shape[0] <= 384 - 7  # cropped to where both images are valid


def test_a_non_rigid_distortion_is_found_and_fixed_by_optical_flow(pair):
    noisy, clean = pair
    distorted = warped(clean)
    report = check_pair(noisy, distorted)
    assert not report.registered and report.local_shift > 1.5
    assert f"parts of the target are offset by up to {report.local_shift:.1f} px" in report.message
    rigid_only = register_pair(noisy, distorted, local=False)
    fixed = register_pair(noisy, distorted)
    assert fixed.after.registered
    assert fixed.after.correlation > rigid_only.after.correlation + 0.02
    assert fixed.after.correlation > check_pair(noisy, clean).correlation - 0.01


def test_training_data_refuses_a_misregistered_pair_unless_asked_to_register(pair):
    noisy, clean = pair
    bad = shifted(clean, 7, 0)
    with pytest.raises(MisregisteredError, match="Register the pair first") as info:
        denoise_data(noisy, bad, patch=32)
    assert not info.value.reports[0].registered
    data = denoise_data(noisy, bad, patch=32, register=True)
    assert data.aligned == 1 and data.info["aligned"] == 1
    assert all(r.registered for r in data.registration)
    assert data.train.draw(2, np.random.default_rng(0))["target"].shape == (2, 1, 32, 32)


def test_a_stack_names_the_misregistered_slice(pair):
    noisy, clean = pair
    stack_noisy = np.stack([noisy[:192, :192]] * 3)
    stack_clean = np.stack([clean[:192, :192], clean[:192, :192], shifted(clean[:192, :192], 5, 5)])
    with pytest.raises(MisregisteredError, match=r"slice 2"):
        denoise_data(stack_noisy, stack_clean, patch=32)
