"""The evaluation protocol's metrics: one PSNR definition, margins with intervals, and the scores
an uncertainty map is judged by."""
import numpy as np
import pytest

from napari_emdiffuse import evaluation as ev


def test_psnr_is_affine_matched_with_the_dtype_peak():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    noisy = ref.astype(np.float64) + rng.normal(0, 5, ref.shape)
    # a brightness/contrast change does not cost PSNR: the affine match removes it
    assert ev.psnr(2 * noisy + 30, ref) == pytest.approx(ev.psnr(noisy, ref), abs=1e-9)
    mse = np.mean((ev.affine_match(noisy, ref) - ref) ** 2)
    assert ev.psnr(noisy, ref) == pytest.approx(10 * np.log10(255 ** 2 / mse))


def test_margin_interval_separates_a_better_image_and_ties_an_equal_one():
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 256, (256, 256)).astype(np.uint8).astype(np.float64)
    good = ref + rng.normal(0, 4, ref.shape)
    bad = ref + rng.normal(0, 6, ref.shape)
    other = ref + rng.normal(0, 4, ref.shape)
    better = ev.psnr_margin(good, bad, ref.astype(np.uint8))
    assert better["beats"] and better["ci95"][0] > 0
    assert better["margin_db"] == pytest.approx(ev.psnr(good, ref.astype(np.uint8)) - ev.psnr(bad, ref.astype(np.uint8)), abs=0.02)
    assert ev.psnr_margin(good, other, ref.astype(np.uint8))["tie"]


def test_uncertainty_scores_reward_a_map_that_predicts_the_error():
    rng = np.random.default_rng(2)
    sigma = rng.uniform(1, 10, 400)
    err = np.abs(rng.normal(0, sigma))
    informed = ev.judge_uncertainty(sigma, err, rng.uniform(size=400))
    assert informed["spearman"] > 0.3 > abs(informed["spearman_proxy"])
    assert informed["ause"] < informed["ause_proxy"]
    assert ev.ause(err, err) == pytest.approx(0.0)
    # calibrated by construction: in every decile the measured RMSE is close to the predicted
    measured = np.sqrt((rng.normal(0, sigma[:, None], (400, 400)) ** 2).mean(axis=1))
    ratios = [b["ratio"] for b in ev.reliability(sigma, measured)]
    assert all(0.85 < r < 1.15 for r in ratios)


def test_blocks_cover_stacks_and_drop_partial_edges():
    a = np.arange(2 * 40 * 33, dtype=float).reshape(2, 40, 33)
    assert ev.blocks(a).shape == (2 * 2 * 2, 256)
    assert ev.mask_scores([1, 0, 0, 0, 0, 0, 0, 0, 0, 1], np.arange(10.0))["recall"] == 1.0


def test_noisier_copy_adds_the_given_noise_reproducibly():
    image = np.full((128, 128), 120, dtype=np.uint8)
    louder = ev.noisier_copy(image, 6.0, seed=3)
    assert louder.dtype == np.uint8 and np.array_equal(louder, ev.noisier_copy(image, 6.0, seed=3))
    assert (louder.astype(float) - 120).std() == pytest.approx(6.0, rel=0.05)


def test_spearman_gap_interval_holds_a_real_gain_and_ties_equal_maps():
    rng = np.random.default_rng(4)
    sigma = rng.uniform(1, 10, 500)
    err = np.abs(rng.normal(0, sigma))
    sharp, blurred = sigma, sigma + rng.normal(0, 4, 500)  # the second predicts the error less well
    gap = ev.spearman_gap(sharp, err, blurred, err)
    assert gap["gap"] == pytest.approx(ev.spearman(sharp, err) - ev.spearman(blurred, err), abs=1e-3)
    assert 0 < gap["ci95"][0] < gap["gap"] < gap["ci95"][1]
    other = sigma + rng.normal(0, 4, 500)
    tie = ev.spearman_gap(other, err, blurred, err)
    assert tie["ci95"][0] < 0 < tie["ci95"][1]
    # judged against proxies, the gain over the better one comes with its interval
    judged = ev.judge_predicted_error(sharp, err, {"weak": rng.uniform(size=500), "blurred": blurred})
    assert judged["spearman_gain"] == pytest.approx(gap["gap"], abs=2e-3)
    assert judged["spearman_gain_ci95"] == gap["ci95"]


def test_sem_like_noise_is_as_strong_relative_to_the_span():
    rng = np.random.default_rng(5)
    image = np.tile(np.linspace(40, 200, 256), (256, 1)).astype(np.uint8)
    model = {"std": 6.0, "rho_y": 0.3, "rho_x": 0.2}
    noised, std = ev.sem_like_noise(image, model, model_span=120.0, rng=rng)
    lo, hi = np.percentile(image, [0.1, 99.9])
    assert std == pytest.approx(6.0 / 120.0 * (hi - lo))
    assert noised.dtype == np.uint8 and (noised.astype(float) - image).std() == pytest.approx(std, rel=0.05)
