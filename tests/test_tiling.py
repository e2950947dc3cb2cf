"""Tiled restoration: exactness, seams, cost, shapes and the core API's callbacks."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import ConditionNet

from napari_emdiffuse.model import RestorationModel, model_from_card
from napari_emdiffuse.noise import positional_noise
from napari_emdiffuse.api import Cancelled, restore, restore_slices
from napari_emdiffuse.tiling import TileGrid, tile_starts


def identity_model():
    card = {"name": "identity", "task": "denoise",
            "diffusion": {"parameterization": "x0", "clip": None, "steps": 3, "samples": 2}}
    return RestorationModel(card=card, network=ConditionNet())


def tiny_model(**diffusion):
    card = {"name": "tiny", "task": "denoise",
            "network": {"inner_channel": 8, "channel_mults": [1, 2], "res_blocks": 1, "attn_res": [],
                        "norm_groups": 4, "aleatoric": True},
            "diffusion": {"parameterization": "x0", "steps": 2, "samples": 2, **diffusion},
            "uncertainty": {"threshold": 0.05}}
    torch.manual_seed(0)
    model = model_from_card(card)
    for p in model.network.parameters():  # random, not zero-initialised, so tiles really differ
        nn.init.normal_(p, std=0.2)
    return model


@pytest.mark.parametrize("shape", [(37, 53), (300, 170), (8, 300)])
def test_identity_model_reproduces_input_exactly(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, shape).astype(np.uint8)
    result = restore(image, identity_model(), tile=64, overlap=16)
    assert result.mean.dtype == np.uint8 and result.mean.shape == image.shape
    np.testing.assert_array_equal(result.mean, image)
    assert float(result.std.max()) < 1e-3  # every sample equals the input


def test_identity_float_stack_within_rounding():
    image = np.random.default_rng(1).normal(100, 20, (3, 90, 130)).astype(np.float32)
    result = restore(image, identity_model(), tile=32, overlap=8)
    assert result.mean.dtype == np.float32 and result.mean.shape == image.shape
    np.testing.assert_allclose(result.mean, image, rtol=0, atol=1e-3)


def test_default_tiling_costs_at_most_1_35x_on_a_large_image():
    grid = TileGrid.plan((4096, 4096), 256, tiny_model().tile["overlap"], 8)
    assert grid.evaluated_fraction <= 1.35
    starts = tile_starts(4096, 256, 24)
    assert starts[0] == 0 and starts[-1] == 4096 - 256
    assert min(np.diff(starts)) <= 256 - 24  # neighbours overlap by at least the overlap


def test_no_seams_border_statistics_equal_interior():
    """Horizontal differences across the tile borders look like those anywhere else."""
    model = tiny_model()
    image = (np.random.default_rng(2).random((64, 256)) * 255).astype(np.float32)
    tile = 64

    def border_ratio(overlap):
        result = restore(image, model, tile=tile, overlap=overlap, samples=2, steps=2)
        grad = np.abs(np.diff(result.mean.astype(np.float64), axis=1)).mean(axis=0)
        starts = tile_starts(256, tile, overlap)
        borders = sorted({s + tile - 1 for s in starts[:-1]} | {s for s in starts[1:]})
        return grad[borders].mean() / np.delete(grad, borders).mean(), result, borders

    ratio, result, borders = border_ratio(16)
    assert abs(ratio - 1) < 0.15
    assert border_ratio(0)[0] > 1.5  # the same check sees the seams of tiles butted together
    # The blended sample spread is as large at borders as inside (no averaging of independent tiles).
    std_cols = result.std.mean(axis=0)
    assert abs(std_cols[borders].mean() / np.delete(std_cols, borders).mean() - 1) < 0.15


def test_result_does_not_depend_on_tiling_for_identity_noise():
    """Noise comes from global positions: any window draws the same numbers."""
    full = positional_noise((0, 0), (200, 150), seed=3, stream=(0, 1))
    part = positional_noise((70, 33), (50, 90), seed=3, stream=(0, 1))
    np.testing.assert_array_equal(full[70:120, 33:123], part)
    assert abs(full.mean()) < 0.05 and abs(full.std() - 1) < 0.05


def test_seed_reproducible_and_samples_differ():
    model = tiny_model()
    image = (np.random.default_rng(4).random((40, 48)) * 255).astype(np.uint8)
    a = restore(image, model, tile=32, overlap=8, seed=5)
    b = restore(image, model, tile=32, overlap=8, seed=5)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert a.std.dtype == np.float32 and a.std.min() >= 0 and a.std.max() > 0
    assert a.aleatoric.shape == image.shape and a.mask.dtype == np.uint8


def test_progress_counts_every_tile_step_and_cancel_keeps_finished_slices():
    model = tiny_model()
    stack = (np.random.default_rng(5).random((4, 40, 40)) * 255).astype(np.uint8)
    seen = []
    restore(stack[:1], model, tile=32, overlap=8, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] and all(b >= a for (a, _), (b, _) in zip(seen, seen[1:]))

    calls = {"n": 0}
    per_slice = seen[-1][1]

    def cancel():  # request a stop in the middle of the third slice
        calls["n"] += 1
        return done[0] > 2 * per_slice + 1

    done = [0]
    with pytest.raises(Cancelled) as info:
        restore(stack, model, tile=32, overlap=8, cancel=cancel,
                progress=lambda d, t: done.__setitem__(0, d))
    partial = info.value.partial
    assert partial.info["slices"] == [0, 1] and partial.mean.shape == (2, 40, 40)
    assert list(z for z, _ in restore_slices(stack, model, tile=32, overlap=8, slices=[3])) == [3]


def test_superres_output_is_scaled():
    model = tiny_model()
    model.card["task"] = "superres"
    image = (np.random.default_rng(6).random((30, 20)) * 255).astype(np.uint8)
    assert restore(image, model, tile=32, overlap=8).mean.shape == (60, 40)


def test_wrong_task_and_bad_shapes_are_clear():
    with pytest.raises(ValueError, match="denoise model"):
        restore(np.zeros((8, 8)), tiny_model(), task="isotropic")
    with pytest.raises(ValueError, match="dimensions"):
        restore(np.zeros((2, 2, 8, 8)), tiny_model())
    with pytest.raises(ValueError, match="constant"):
        restore(np.zeros((16, 16)), tiny_model())


def test_posterior_mean_estimate_is_the_first_level_denoiser_and_ignores_steps():
    model = tiny_model()
    image = (np.random.default_rng(7).random((40, 48)) * 255).astype(np.float32)
    a = restore(image, model, tile=32, overlap=8, steps=1, estimate="posterior_mean")
    b = restore(image, model, tile=32, overlap=8, steps=3, estimate="posterior_mean")
    np.testing.assert_allclose(a.mean, b.mean, rtol=0, atol=1e-3)
    c = restore(image, model, tile=32, overlap=8, steps=3, estimate="sample_mean")
    assert np.abs(c.mean - b.mean).max() > 1e-2  # the sample mean carries sampling noise
    np.testing.assert_array_equal(b.std, c.std)  # the spread comes from the same samples
    with pytest.raises(ValueError, match="estimate"):
        restore(image, model, estimate="median")


def test_self_ensemble_averages_rotations_and_counts_its_evaluations():
    model = tiny_model()
    image = (np.random.default_rng(8).random((40, 56)) * 255).astype(np.float32)
    seen = []
    one = restore(image, model, tile=32, overlap=8, steps=2, estimate="posterior_mean")
    four = restore(image, model, tile=32, overlap=8, steps=2, estimate="posterior_mean", ensemble=4,
                   progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1]  # progress reaches its total with the extra evaluations
    assert four.mean.shape == image.shape and np.abs(four.mean - one.mean).max() > 1e-3
    np.testing.assert_array_equal(four.std, one.std)  # the ensemble changes only the estimate
    # an equivariant model (identity) gives the same answer under every rotation/flip
    np.testing.assert_allclose(restore(image, identity_model(), tile=32, overlap=8, estimate="posterior_mean",
                                       ensemble=8).mean, image, atol=1e-3)


def test_binned_normalisation_is_steady_under_extra_noise():
    """Percentiles of 2x2 means move far less than raw percentiles when the scan is noisier."""
    from napari_emdiffuse.normalize import Normalizer
    from napari_emdiffuse.sample_data import load_pair

    noisy = load_pair()[0].astype(np.float32)
    noisier = noisy + np.random.default_rng(0).normal(0, 12, noisy.shape).astype(np.float32)
    for b, tol in [(2, 0.08), (1, None)]:
        a, n = Normalizer.fit(noisy, bin=b), Normalizer.fit(noisier, bin=b)
        change = abs((n.hi - n.lo) / (a.hi - a.lo) - 1)
        if tol:
            assert change < tol
        else:
            assert change > 0.15  # raw percentiles widen by ~20% here
