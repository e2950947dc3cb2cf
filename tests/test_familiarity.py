"""The familiarity screen: the bundled SEM denoiser's own features tell its kind of image from
another modality, even one given SEM-like noise, and every restore reports the distance."""
import numpy as np
import pytest
import tifffile

from napari_emdiffuse import familiarity
from napari_emdiffuse.api import restore
from napari_emdiffuse.engine import fit_normalizer
from napari_emdiffuse.loading import load_model
from napari_emdiffuse.sample_data import load_pair
from napari_emdiffuse.sample_data import __file__ as sample_init
from pathlib import Path

FIBSEM = Path(sample_init).parent / "fibsem_flyem_crop.tif"


@pytest.fixture(scope="module")
def demo():
    return load_model("demo-denoise")


def test_crops_cover_a_plane_evenly_up_to_the_limit():
    assert familiarity.crop_windows((96, 300), 8) == [(0, 0, 96, 96), (0, 96, 96, 96), (0, 192, 96, 96)]
    assert familiarity.crop_windows((61, 250), 8) == [(0, 0, 56, 96), (0, 96, 56, 96)]  # the network's multiple
    assert familiarity.crop_windows((5, 250), 8) == []
    many = familiarity.crop_windows((2000, 2000), 8)
    assert len(many) == familiarity.MAX_CROPS and many[0] == (0, 0, 96, 96) and many[-1] == (1824, 1824, 96, 96)


def test_the_sem_denoiser_finds_fibsem_unfamiliar_even_with_sem_like_noise(demo):
    features = demo.uncertainty["validated"]["features"]
    sem = load_pair()[0][:192, :384]
    fib = tifffile.imread(FIBSEM)[16:24]
    rng = np.random.default_rng(0)
    noisy_fib = np.clip(fib + rng.normal(0, 6, fib.shape), 0, 255).astype(np.uint8)

    def distance(image):
        planes = fit_normalizer(image, demo)(image).reshape(-1, *image.shape[-2:])
        return familiarity.input_distance(demo, lambda z: planes[z], len(planes), features)

    assert distance(sem) < features["limit"] < min(distance(fib), distance(noisy_fib))
    assert distance(sem) == distance(sem)  # a fixed noise draw: the same answer every time
    assert distance(sem[:96, :192]) is None  # 2 crops: too small to judge


def test_restore_reports_the_distance_and_flags_another_modality(demo):
    sem = restore(load_pair()[0][:192, :384], demo, device="cpu")
    check = sem.info["validation"]
    assert "feature_distance" in check and not any("unlike its training data" in w for w in check["why"])
    fib = restore(tifffile.imread(FIBSEM)[16:20], demo, device="cpu")
    assert any("unlike its training data" in w for w in fib.info["validation"]["why"])
