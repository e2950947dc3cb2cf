"""Samplers against a known answer: Gaussian data, where the exact denoiser is a closed form.

Per pixel x0 ~ N(MU, S0^2) and the condition is c = x0 + N(0, SC^2). Given c, x0 is Gaussian with
variance V = 1 / (1/S0^2 + 1/SC^2) and mean M(c) = V (MU/S0^2 + c/SC^2), and the exact denoiser of
x = x0 + sigma n is E[x0 | x, c] = M + V / (V + sigma^2) (x - M). A correct sampler started from
the exact marginal at sigma_max must end with samples of that posterior.
"""
import math

import numpy as np
import pytest
import torch

from napari_emdiffuse.diffusion.denoiser import Denoiser, network_target
from napari_emdiffuse.diffusion.samplers import SAMPLERS, evaluations, sample
from napari_emdiffuse.diffusion.schedules import gammas, sampling_sigmas

PIXELS = 20000
MU, S0, SC = 0.2, 0.5, 0.3
POST_VAR = 1.0 / (1.0 / S0 ** 2 + 1.0 / SC ** 2)  # posterior sd ~0.26


class GaussianPosterior:
    def __init__(self, seed: int = 0, shape=(PIXELS,)):
        self.gen = torch.Generator().manual_seed(seed)
        self.shape = shape
        x0 = MU + S0 * torch.randn(shape, generator=self.gen)
        self.condition = x0 + SC * torch.randn(shape, generator=self.gen)
        self.mean = POST_VAR * (MU / S0 ** 2 + self.condition / SC ** 2)

    def denoise(self, x, sigma):
        return self.mean + POST_VAR / (POST_VAR + float(sigma) ** 2) * (x - self.mean)

    def start(self, sigma_max: float) -> torch.Tensor:
        """A draw from the exact marginal of x at sigma_max given c."""
        return self.mean + math.sqrt(POST_VAR + sigma_max ** 2) * self.noise(0)

    def noise(self, _i: int) -> torch.Tensor:
        return torch.randn(self.shape, generator=self.gen)

    def standardized(self, samples: torch.Tensor) -> torch.Tensor:
        """(samples - posterior mean) / posterior sd: N(0, 1) for a correct sampler."""
        return (samples - self.mean) / math.sqrt(POST_VAR)


def run(sampler: str, steps: int, grid: str = "karras", seed: int = 0) -> torch.Tensor:
    post = GaussianPosterior(seed)
    sigmas = sampling_sigmas(steps, grid, schedule="emdiffuse_test")
    out = sample(sampler, post.denoise, post.start(float(sigmas[0])), sigmas, post.noise)
    return post.standardized(out)


# Steps are what it takes to be within a few percent on this posterior (sd 0.26) on the default
# karras grid (sigma 80 .. 2e-3). Fewer steps are measurably off (see test_convergence_order):
# at 10 steps DDIM's spread is 30 % too small, DPM++ 2M's 13 % and Heun's 27 % too large.
@pytest.mark.parametrize("sampler, steps, grid, std_tol", [
    ("dpmpp_2m", 40, "karras", 0.025),
    ("heun", 40, "karras", 0.025),
    ("ddim", 400, "karras", 0.025),       # first order: needs many steps
    ("heun_churn", 80, "karras", 0.03),
    ("ddpm", 400, "karras", 0.03),
    ("ddpm", 1000, "respaced", 0.05),     # EMDiffuse's own sampler: every step of its test schedule
])
def test_samplers_reach_the_posterior(sampler, steps, grid, std_tol):
    z = run(sampler, steps, grid)
    assert torch.isfinite(z).all()
    assert abs(float(z.mean())) < 0.03
    assert abs(float(z.std()) - 1.0) < std_tol
    # The posterior mean is per pixel: samples must track the condition, not just the global mean.
    assert abs(float(torch.corrcoef(torch.stack([z, GaussianPosterior(0).condition]))[0, 1])) < 0.03


@pytest.mark.parametrize("sampler, steps", [("ddpm", 100), ("ddpm", 200), ("heun_churn", 20)])
def test_few_step_stochastic_samplers_keep_the_mean(sampler, steps):
    """With few steps the spread is off (ancestral sampling with the mean denoiser shrinks it:
    std ~0.82 at 100 respaced steps), but the per-pixel mean is still the posterior's."""
    z = run(sampler, steps, "respaced" if sampler == "ddpm" else "karras")
    assert abs(float(z.mean())) < 0.03
    assert 0.6 < float(z.std()) < 1.2


def _deterministic_std(sampler: str, steps: int) -> float:
    """Deterministic samplers map the Gaussian linearly: follow one unit-sd deviation through."""
    post = GaussianPosterior(shape=(1,))
    post.mean = torch.zeros(1, dtype=torch.float64)
    sigmas = sampling_sigmas(steps, "karras")
    x = torch.full((1,), math.sqrt(POST_VAR + float(sigmas[0]) ** 2), dtype=torch.float64)
    return float(sample(sampler, post.denoise, x, sigmas, None)) / math.sqrt(POST_VAR)


@pytest.mark.parametrize("sampler, order", [("ddim", 1), ("dpmpp_2m", 2), ("heun", 2)])
def test_convergence_order(sampler, order):
    """Doubling the steps divides the error by 2**order (a broken 2nd-order correction shows as 1st)."""
    err = [abs(_deterministic_std(sampler, n) - 1.0) for n in (20, 40, 80)]
    ratios = [err[0] / err[1], err[1] / err[2]]
    assert err[2] < 0.05
    for r in ratios:
        assert 2 ** order * 0.8 < r < 2 ** order * 1.4, (err, ratios)


def test_ddpm_is_emdiffuse_p_sample_loop():
    """Over EMDiffuse's full test schedule, `ddpm` is exactly its variance-preserving ancestral loop
    y_{t-1} = coef1 y0 + coef2 y_t + exp(logvar / 2) z with clamped x0, given the same noise z."""
    gen = torch.Generator().manual_seed(1)
    shape = (64,)
    cond = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
    zs = torch.randn((1001, *shape), generator=gen, dtype=torch.float64)

    def denoise(x, sigma):  # any denoiser will do; this one is nonlinear
        return torch.tanh(cond + x / (1 + float(sigma)))

    # EMDiffuse (Palette) posterior coefficients.
    g = gammas("emdiffuse_test")
    g_prev = np.append(1.0, g[:-1])
    beta = 1 - g / g_prev
    coef1 = beta * np.sqrt(g_prev) / (1 - g)
    coef2 = (1 - g_prev) * np.sqrt(1 - beta) / (1 - g)
    logvar = np.log(np.maximum(beta * (1 - g_prev) / (1 - g), 1e-20))
    y = zs[0].clone()
    for t in range(len(g) - 1, -1, -1):
        y0 = denoise(y / math.sqrt(g[t]), math.sqrt((1 - g[t]) / g[t]))
        y = coef1[t] * y0 + coef2[t] * y
        if t > 0:
            y = y + math.exp(0.5 * logvar[t]) * zs[len(g) - t]
    expected = y

    sigmas = sampling_sigmas(1000, "respaced", schedule="emdiffuse_test")
    assert len(sigmas) == 1001
    x = zs[0] / math.sqrt(g[-1])  # the same start, in the variance-exploding state
    got = sample("ddpm", denoise, x, sigmas, lambda i: zs[i + 1])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_denoiser_wraps_a_network_exactly(parameterization):
    """A network that outputs the exact target (in its parameterization, on the variance-preserving
    input) becomes, through Denoiser, the exact denoiser: sampling reaches the posterior."""
    post = GaussianPosterior(seed=3, shape=(2, 1, 100, 100))

    class ExactNetwork(torch.nn.Module):
        def forward(self, net_in, gamma):
            cond, y = net_in[:, :1], net_in[:, 1:]
            gamma = gamma.reshape(-1, 1, 1, 1)
            mean = POST_VAR * (MU / S0 ** 2 + cond / SC ** 2)
            x0 = mean + POST_VAR * gamma / (POST_VAR * gamma + 1 - gamma) * (y / gamma.sqrt() - mean)
            eps = (y - gamma.sqrt() * x0) / (1 - gamma).sqrt()
            return network_target(parameterization, x0, eps, gamma)

    denoise = Denoiser(ExactNetwork(), parameterization, clip=None).bind(post.condition)
    for sigma in (0.01, 0.5, 20.0):
        x = post.start(sigma)
        torch.testing.assert_close(denoise(x, sigma), post.denoise(x, sigma), rtol=1e-4, atol=1e-4)
    sigmas = sampling_sigmas(40, "karras")
    z = post.standardized(sample("dpmpp_2m", denoise, post.start(80.0), sigmas, post.noise))
    assert abs(float(z.mean())) < 0.03
    assert abs(float(z.std()) - 1.0) < 0.03


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_evaluations_and_progress_are_counted(sampler):
    post = GaussianPosterior(shape=(8,))
    calls, progress = [], []

    def denoise(x, sigma):
        calls.append(float(sigma))
        return post.denoise(x, sigma)

    sigmas = sampling_sigmas(6, "karras")
    out = sample(sampler, denoise, post.start(80.0), sigmas, post.noise,
                 callback=lambda done, total: progress.append((done, total)))
    assert out.shape == (8,)
    assert len(calls) == evaluations(sampler, 6)
    assert progress == [(i, 6) for i in range(1, 7)]
    assert all(s > 0 for s in calls)  # the network is never asked about sigma = 0


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown sampler 'euler'.*dpmpp_2m"):
        sample("euler", lambda x, s: x, torch.zeros(2), sampling_sigmas(2), None)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m", "heun"])
def test_sigmas_may_be_a_plain_list(sampler):
    post = GaussianPosterior(shape=(16,))
    sigmas = sampling_sigmas(5, "karras")
    x = post.start(80.0)
    zs = [post.noise(i) for i in range(5)]
    as_tensor = sample(sampler, post.denoise, x, sigmas, lambda i: zs[i])
    as_list = sample(sampler, post.denoise, x, sigmas.tolist(), lambda i: zs[i])
    torch.testing.assert_close(as_list, as_tensor)
