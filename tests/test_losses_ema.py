"""Training losses and the exponential moving average of weights."""
import math

import pytest
import torch

from napari_emdiffuse.diffusion.ema import EMA
from napari_emdiffuse.diffusion.losses import LOSSES, get_loss, heteroscedastic, huber, l1, l2, pinball

PRED = torch.tensor([0.0, 0.5, -1.0, 2.0])
TARGET = torch.tensor([0.0, 0.0, 0.0, 0.0])  # errors 0, 0.5, -1, 2


def test_l1_l2_huber_values():
    assert float(l1(PRED, TARGET)) == pytest.approx((0 + 0.5 + 1 + 2) / 4)
    assert float(l2(PRED, TARGET)) == pytest.approx((0 + 0.25 + 1 + 4) / 4)
    # Huber: quadratic below delta, linear (delta * (|e| - delta / 2)) above.
    delta = 0.6
    expected = (0 + 0.5 * 0.25 + delta * (1 - delta / 2) + delta * (2 - delta / 2)) / 4
    assert float(huber(PRED, TARGET, delta=delta)) == pytest.approx(expected)


def test_heteroscedastic_is_the_gaussian_nll_and_learns_the_error_variance():
    logvar = torch.tensor([0.0, 1.0, -1.0, 0.5])
    err2 = (PRED - TARGET) ** 2
    expected = (0.5 * (torch.exp(-logvar) * err2 + logvar)).mean()
    assert float(heteroscedastic(PRED, TARGET, logvar=logvar)) == pytest.approx(float(expected))
    # Minimising over the log-variance recovers the squared error.
    s = torch.zeros(4, requires_grad=True)
    opt = torch.optim.Adam([s], lr=0.1)
    pred, target = torch.tensor([0.1, 0.5, -1.0, 2.0]), torch.zeros(4)
    for _ in range(500):
        opt.zero_grad()
        heteroscedastic(pred, target, logvar=s).backward()
        opt.step()
    torch.testing.assert_close(s.detach().exp(), pred ** 2, rtol=0.02, atol=1e-3)
    with pytest.raises(ValueError, match="aleatoric head"):
        heteroscedastic(PRED, TARGET)


def test_pinball_is_half_l1_at_the_median_and_targets_its_quantile():
    assert float(pinball(PRED, TARGET, quantile=0.5)) == pytest.approx(0.5 * float(l1(PRED, TARGET)))
    # Under-prediction costs q, over-prediction 1 - q.
    assert float(pinball(torch.tensor([0.0]), torch.tensor([1.0]), quantile=0.9)) == pytest.approx(0.9)
    assert float(pinball(torch.tensor([1.0]), torch.tensor([0.0]), quantile=0.9)) == pytest.approx(0.1)
    # The best constant prediction is the target's quantile.
    target = torch.linspace(0, 1, 1001)
    grid = torch.linspace(0, 1, 201)
    losses = torch.stack([pinball(c.expand_as(target), target, quantile=0.9) for c in grid])
    assert float(grid[losses.argmin()]) == pytest.approx(0.9, abs=0.01)


def test_get_loss_by_name():
    assert set(LOSSES) == {"l1", "l2", "huber", "heteroscedastic", "pinball"}
    assert get_loss("huber") is huber
    with pytest.raises(ValueError, match="unknown loss 'l3'.*l1, l2"):
        get_loss("l3")


def _net(value: float) -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)
    return net


def test_ema_decay_without_warmup():
    ema = EMA(_net(0.0), decay=0.9, warmup=False)
    online = _net(1.0)
    for _ in range(3):
        ema.update(online)
    for p in ema.network.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 1 - 0.9 ** 3))
        assert not p.requires_grad
    assert not ema.network.training


def test_ema_warmup_follows_the_network_early_on():
    ema = EMA(_net(0.0), decay=0.999, warmup=True)
    online = _net(1.0)
    online[1].running_mean.fill_(3.0)
    ema.update(online)
    # First update: decay min(0.999, 2 / 11), so the average moves 9/11 of the way.
    p = next(ema.network.parameters())
    torch.testing.assert_close(p, torch.full_like(p, 9 / 11))
    # Buffers are copied, not averaged.
    torch.testing.assert_close(ema.network[1].running_mean, torch.full((2,), 3.0))
    expected = 9 / 11
    for n in range(2, 50):
        ema.update(online)
        expected = 1 - (1 - expected) * min(0.999, (1 + n) / (10 + n))
    assert float(next(ema.network.parameters())[0, 0]) == pytest.approx(expected, rel=1e-5)
    assert ema.updates == 49


def test_ema_state_dict_round_trip():
    ema = EMA(_net(0.0), decay=0.99)
    online = _net(1.0)
    for _ in range(5):
        ema.update(online)
    restored = EMA(_net(-5.0), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert (restored.decay, restored.updates) == (0.99, 5)
    for a, b in zip(restored.network.state_dict().values(), ema.network.state_dict().values()):
        torch.testing.assert_close(a, b)
    # And the two continue identically.
    ema.update(online)
    restored.update(online)
    for a, b in zip(restored.network.parameters(), ema.network.parameters()):
        torch.testing.assert_close(a, b)
    assert math.isclose(float(next(restored.network.parameters())[0, 0]),
                        float(next(ema.network.parameters())[0, 0]))
