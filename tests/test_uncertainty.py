"""The predicted-error map: smoothing, the card's calibration and its fallback, fitting it on
validation data, the mask threshold's stated target, the check for inputs beyond validation, and
the synthetic case with exact ground truth."""
import numpy as np
import pytest
import yaml
from scipy.ndimage import gaussian_filter

from napari_emdiffuse import evaluation as ev
from napari_emdiffuse.uncertainty import (UNCALIBRATED, calibration_for, correlation_gap, gaussian_smooth,
                                          predicted_error, relative_error, removed_fraction, residual_correlation,
                                          validation_check)


def test_gaussian_smooth_matches_scipy_on_the_last_two_axes():
    a = np.random.default_rng(0).random((3, 40, 57))
    for sigma in (0.7, 4.0, 30.0):
        expected = gaussian_filter(a, (0, sigma, sigma), mode="reflect", truncate=3.0)
        assert np.allclose(gaussian_smooth(a, sigma), expected, atol=1e-12)
    assert np.array_equal(gaussian_smooth(a, 0), a)


def test_predicted_error_is_the_smoothed_weighted_rms_in_intensity_units():
    rng = np.random.default_rng(1)
    ale, std = rng.uniform(1, 3, (2, 32, 48)), rng.uniform(0, 2, (2, 32, 48))
    cal = {"weights": {"aleatoric": 1.5, "spread": 0.5}, "smoothing_px": 2.0}
    out = predicted_error(std, ale, cal)
    assert out.shape == ale.shape and out.dtype == np.float32
    expected = np.sqrt(gaussian_filter((1.5 * ale) ** 2 + (0.5 * std) ** 2, (0, 2, 2), mode="reflect", truncate=3.0))
    assert np.allclose(out, expected, rtol=1e-5)
    # a constant std stays that constant times its weight, whatever the smoothing
    assert np.allclose(predicted_error(None, np.full((8, 8), 2.0), {"weights": {"aleatoric": 1.2}, "smoothing_px": 3}), 2.4)


def test_missing_sources_fall_back_or_give_none():
    ale = np.full((8, 8), 2.0)
    cal = {"weights": {"aleatoric": 1.0, "spread": 1.0}, "smoothing_px": 0,
           "fallback": {"weights": {"aleatoric": 1.5}, "smoothing_px": 0}}
    assert np.allclose(predicted_error(None, ale, cal), 3.0)  # one sample: no spread, the fallback
    assert predicted_error(None, None, cal) is None
    assert predicted_error(np.ones((8, 8)), None, None) is not None  # uncalibrated: the spread
    assert calibration_for({"threshold": 0.1}) == UNCALIBRATED
    assert calibration_for({"predicted_error": cal}) == cal


def test_bundled_cards_state_a_calibration_the_function_takes():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "models").glob("*.yaml")):
        unc = yaml.safe_load(path.read_text()).get("uncertainty") or {}
        cal = calibration_for(unc)
        assert cal.get("calibrated", True), f"{path.name} has no fitted predicted-error calibration"
        assert predicted_error(np.ones((4, 4)), np.ones((4, 4)), cal) is not None
        assert unc.get("mask_from") == "predicted_error" and unc["threshold"] > 0
        assert unc["validated"]["limit"] > 0
        assert validation_check(np.ones((4, 4)), 100.0, unc) is not None


def synthetic_blocks(n=600, seed=3):
    """Per-block true error levels, an informative map (the level), and measured block errors."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(1, 6, n)
    measured = np.sqrt((rng.normal(0, level[:, None], (n, 256)) ** 2).mean(axis=1))
    return level, measured


def block_case(region: int, seed: int = 4):
    """A per-pixel error whose level is constant over ``region`` x ``region`` squares, an aleatoric
    std that knows the level (but is under-scaled by 2) and an uninformative spread."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(1, 6, (1, 128 // region, 256 // region)).repeat(region, axis=1).repeat(region, axis=2)
    error = rng.normal(0, 1, level.shape) * level
    return 0.5 * level, rng.uniform(1, 6, level.shape), ev.block_rms(error)


def test_fitting_on_validation_picks_the_informative_source_and_scales_it():
    aleatoric, spread, blocks = block_case(16)
    cal, table = ev.fit_predicted_error(spread, aleatoric, blocks, smoothing=(0.0,))
    assert list(cal["weights"]) == ["aleatoric"] and cal["weights"]["aleatoric"] == pytest.approx(2.0, rel=0.1)
    assert {("aleatoric",), ("spread",)} <= {tuple(r["weights"]) for r in table}
    assert all(w > 0 for r in table for w in r["weights"].values())  # a sum that weighs the spread 0 is not kept
    judged = ev.judge_predicted_error(ev.block_rms(predicted_error(spread, aleatoric, cal)), blocks,
                                      {"noise": ev.block_rms(spread)})
    assert judged["calibrated"] and judged["ranks"]


def test_a_smoother_map_is_preferred_when_it_ranks_as_well():
    rng = np.random.default_rng(8)
    field = gaussian_filter(rng.normal(size=(1, 256, 256)), (0, 24, 24))
    level = 1 + 5 * (field - field.min()) / (field.max() - field.min())  # varies over tens of pixels
    blocks = ev.block_rms(rng.normal(0, 1, level.shape) * level)
    cal, table = ev.fit_predicted_error(rng.uniform(1, 6, level.shape), level, blocks, smoothing=(0.0, 4.0))
    assert cal["smoothing_px"] == 4.0
    best = max(r["spearman"] for r in table)
    assert [r["spearman"] for r in table if r["weights"] == cal["weights"] and r["smoothing_px"] == 4.0][0] >= best - 0.01


def test_mask_threshold_meets_its_target_when_the_map_ranks_well():
    level, measured = synthetic_blocks()
    got = ev.mask_threshold(level, measured)
    assert got["target_met"] and got["recall"] >= 0.5 and got["flagged"] <= 0.15
    noise = np.random.default_rng(5).uniform(size=level.size)
    blind = ev.mask_threshold(noise, measured)  # a useless map flags the whole budget, and says so
    assert not blind["target_met"] and blind["flagged"] == pytest.approx(0.15, abs=0.01)


def test_validation_check_flags_a_harder_input_and_unfamiliar_noise():
    predicted = np.full((64, 64), 5.0)
    assert relative_error(predicted, span=100.0) == pytest.approx(0.1)
    card = {"validated": {"limit": 0.12, "residual_correlation": [0.3, 0.15], "tolerance": 0.1}}
    assert validation_check(predicted, 100.0, card)["beyond"] is False
    harder = validation_check(predicted * 2, 100.0, card)
    assert harder["beyond"] and "above the validated" in harder["why"][0]
    rng = np.random.default_rng(7)
    white = rng.normal(0, 5, (64, 64))
    assert np.allclose(residual_correlation(white, 0 * white), 0, atol=0.05)
    unfamiliar = validation_check(predicted, 100.0, card, image=white, restored=np.zeros_like(white))
    assert unfamiliar["beyond"] and "correlation" in unfamiliar["why"][0]
    like = ev.correlated_noise((64, 64), {"rho_y": 0.3, "rho_x": 0.15}, rng)
    assert validation_check(predicted, 100.0, card, image=like, restored=np.zeros_like(like))["beyond"] is False
    assert validation_check(predicted, 100.0, {}) is None


def test_validation_check_accepts_noise_between_the_validated_kinds():
    """With the noisier validation copy's correlations on the card, its kind of noise and mixtures
    of the two pass; noise unlike either (more correlated than the acquisition's) is still flagged."""
    predicted = np.full((128, 128), 5.0)
    card = {"validated": {"limit": 0.12, "residual_correlation": [0.3, 0.2], "residual_correlation_noisier": [0.0, 0.0],
                          "tolerance": 0.1}}
    assert correlation_gap([0.15, 0.1], [[0.3, 0.2], [0.0, 0.0]]) == pytest.approx(0.0, abs=1e-9)
    assert correlation_gap([0.15, 0.1], [[0.3, 0.2]]) == pytest.approx(0.15)
    rng = np.random.default_rng(9)
    for rho in ({"rho_y": 0.0, "rho_x": 0.0}, {"rho_y": 0.15, "rho_x": 0.1}, {"rho_y": 0.3, "rho_x": 0.2}):
        noise = ev.correlated_noise((128, 128), rho, rng)
        assert validation_check(predicted, 100.0, card, image=noise, restored=np.zeros_like(noise))["beyond"] is False
    streaks = ev.correlated_noise((128, 128), {"rho_y": 0.1, "rho_x": 0.6}, rng)
    flagged = validation_check(predicted, 100.0, card, image=streaks, restored=np.zeros_like(streaks))
    assert flagged["beyond"] and "y 0.30, x 0.20 to y 0.00, x 0.00" in flagged["why"][0]
    alone = {"validated": {k: v for k, v in card["validated"].items() if k != "residual_correlation_noisier"}}
    white = rng.normal(0, 5, (128, 128))  # without the noisier copy on the card, white noise is unvalidated
    assert validation_check(predicted, 100.0, alone, image=white, restored=np.zeros_like(white))["beyond"]
    assert validation_check(predicted, 100.0, card, image=white, restored=np.zeros_like(white))["beyond"] is False


def test_validation_check_flags_a_restoration_that_removed_more_than_any_validated_one():
    """A denoiser that takes away much more than it did on validation inputs (structure, or far more
    noise than it was validated on) is flagged; the usual amount is not."""
    predicted = np.full((64, 64), 5.0)
    card = {"validated": {"limit": 0.12, "removed_limit": 0.13}}
    rng = np.random.default_rng(8)
    image = rng.normal(100, 1, (64, 64))
    assert removed_fraction(image, image - 3.0, 100.0) == pytest.approx(0.06)
    usual = validation_check(predicted, 100.0, card, image=image, restored=image - 3.0)
    assert usual["beyond"] is False and usual["removed"] == pytest.approx(0.06)
    stripped = validation_check(predicted, 100.0, card, image=image, restored=image - 10.0)
    assert stripped["beyond"] and "structure taken away" in stripped["why"][0]


def test_synthetic_pair_has_the_measured_noise():
    rng = np.random.default_rng(6)
    truth = gaussian_filter(rng.uniform(60, 200, (192, 256)), 3)
    model = {"var_intercept": 40.0, "var_slope": -0.1, "rho_y": 0.45, "rho_x": 0.3, "std": 5.0}
    noisy, exact = ev.synthetic_pair(truth, truth, model, blur=0.0)
    assert noisy.dtype == np.uint8 and np.allclose(exact, truth)
    fitted = ev.noise_model(noisy, truth)
    assert fitted["rho_y"] == pytest.approx(0.45, abs=0.05) and fitted["rho_x"] == pytest.approx(0.3, abs=0.05)
    assert fitted["var_slope"] < 0  # darker is noisier, as in the model it came from
    resid = noisy - truth
    expected = np.sqrt(np.mean(40.0 - 0.1 * truth))
    assert resid.std() == pytest.approx(expected, rel=0.05)
