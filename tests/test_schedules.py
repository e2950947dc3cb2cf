"""Noise schedules and the sampling grids built from them."""
import numpy as np
import pytest
import torch

from napari_emdiffuse.diffusion.schedules import (
    NAMED_SCHEDULES, betas, gamma_to_sigma, gammas, sampling_sigmas, schedule_sigmas, sigma_to_gamma,
)


@pytest.mark.parametrize("kind", ["linear", "cosine", "sqrt", "quad", "sqrt_linear"])
def test_beta_schedules_give_decreasing_gammas_in_unit_interval(kind):
    b = betas(kind, 1000)
    assert b.shape == (1000,)
    assert ((b > 0) & (b < 1)).all()
    g = gammas({"kind": kind, "n": 1000})
    assert ((g > 0) & (g <= 1)).all()
    assert (np.diff(g) < 0).all()
    assert g[-1] < 0.05  # every schedule ends close to pure noise


def test_unknown_beta_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown beta schedule 'exp'"):
        betas("exp", 10)


def test_emdiffuse_schedules_cover_the_published_noise_range():
    train = schedule_sigmas("emdiffuse_train")
    assert len(train) == 2000
    assert train[0] == pytest.approx(1e-3, rel=1e-3)
    assert 145 < train[-1] < 155
    assert (np.diff(train) > 0).all()
    test = gammas("emdiffuse_test")
    assert len(test) == 1000 and test[-1] < 1e-15


def test_sigma_gamma_round_trip():
    g = np.array([1e-6, 0.01, 0.5, 0.999])
    np.testing.assert_allclose(sigma_to_gamma(gamma_to_sigma(g)), g, rtol=1e-12)
    assert sigma_to_gamma(0.0) == 1.0


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_respaced_grid_starts_from_pure_noise(steps):
    sig = sampling_sigmas(steps, "respaced", schedule="emdiffuse_test")
    assert len(sig) == steps + 1 and sig[-1] == 0
    assert (torch.diff(sig) < 0).all()
    assert float(sig[0]) == pytest.approx(schedule_sigmas("emdiffuse_test")[-1])
    assert sigma_to_gamma(float(sig[0])) < 1e-3
    assert float(sig[-2]) == pytest.approx(schedule_sigmas("emdiffuse_test")[0])


def test_shrinking_emdiffuse_schedule_does_not_start_from_noise():
    """The pitfall the respaced grid avoids: EMDiffuse's `--step N` rebuilds its linear
    1e-4..0.09 betas with N steps, whose last cumulative alpha is far from 0 for small N, yet
    sampling still starts from pure noise, a state the network was never trained at that level."""
    shrunk = dict(NAMED_SCHEDULES["emdiffuse_test"], n=10)
    last_gamma = gammas(shrunk)[-1]
    assert 0.6 < last_gamma < 0.66
    assert gamma_to_sigma(last_gamma) < 1  # signal still dominates the noise
    assert sigma_to_gamma(float(sampling_sigmas(10, "respaced", schedule="emdiffuse_test")[0])) < 1e-3


def test_karras_and_loglinear_grids():
    k = sampling_sigmas(10, "karras", sigma_min=2e-3, sigma_max=80.0)
    assert len(k) == 11 and k[-1] == 0
    assert float(k[0]) == pytest.approx(80.0) and float(k[-2]) == pytest.approx(2e-3)
    assert (torch.diff(k) < 0).all()
    ll = sampling_sigmas(5, "loglinear", sigma_min=1e-2, sigma_max=100.0)
    np.testing.assert_allclose(ll[:-1].numpy(), [100, 10, 1, 0.1, 0.01], rtol=1e-9)
    # rho = 1 is evenly spaced in sigma
    np.testing.assert_allclose(sampling_sigmas(3, "karras", 1.0, 3.0, rho=1.0).numpy(), [3, 2, 1, 0])
    np.testing.assert_allclose(sampling_sigmas(1, "karras", 1e-3, 50.0).numpy(), [50.0, 0.0])


def test_bad_grid_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown noise grid"):
        sampling_sigmas(4, "cosine")
    with pytest.raises(ValueError, match="steps must be at least 1"):
        sampling_sigmas(0)
