"""Isotropic reconstruction: training data of both routes, the vEMDiffuse conventions (condition
order, 0-based slice index), shapes, pass-through of acquired slices, uncertainty, the 3D variant,
a published-format vEMDiffuse checkpoint, and short trainings on real EM crops."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from napari_emdiffuse.loading import load_model
from napari_emdiffuse.model import RestorationModel, model_from_card
from napari_emdiffuse.api import restore, restore_slices
from napari_emdiffuse.sample_data import load_fibsem, load_sstem
from napari_emdiffuse.tasks import isotropic as iso
from napari_emdiffuse.tiling import Cancelled
from napari_emdiffuse.training import pairs
from napari_emdiffuse.training.data import PatchPairs
from napari_emdiffuse.training.trainer import Trainer, TrainConfig


def reconstruct(volume, model, **kwargs):
    """The whole isotropic volume, as restore() gives it for an isotropic model."""
    return restore(volume, model, task="isotropic", **kwargs)

REFERENCE = Path(__file__).parent / "data" / "emdiffuse"


def tiny_card(dims: int = 2, z_factor: int = 5, **network) -> dict:
    net = {"dims": dims, "in_channel": 3 if dims == 2 else 2, "inner_channel": 8, "channel_mults": [1, 2],
           "res_blocks": 1, "attn_res": [], "norm_groups": 4, "slice_embedding": dims == 2,
           "aleatoric": dims == 2, **network}
    return {"name": f"tiny-iso-{dims}d", "task": "isotropic", "network": net,
            "diffusion": {"parameterization": "x0", "clip": [-1.5, 1.5], "steps": 2, "samples": 2},
            "tile": {"size": 64, "overlap": 16}, "isotropic": {"z_factor": z_factor}}


def tiny_model(dims: int = 2, z_factor: int = 5) -> RestorationModel:
    torch.manual_seed(0)
    model = model_from_card(tiny_card(dims, z_factor))
    with torch.no_grad():
        for p in model.network.parameters():  # zero-initialised outputs would make every sample equal
            p.add_(0.05 * torch.randn_like(p))
    return model


class LerpNet(nn.Module):
    """x0 = the slice at (index+1)/f between the two conditioning slices, read in vEMDiffuse's
    order (channel 0 = slice i+1, channel 1 = slice i): sampling must give linear interpolation."""

    dims, aleatoric, slice_embedding, downsample_factor = 2, False, True, 1

    def __init__(self, f: int):
        super().__init__()
        self.f = f
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise_level, slice_index):
        w = ((slice_index.float() + 1) / self.f).reshape(-1, 1, 1, 1)
        return (1 - w) * x[:, 1:2] + w * x[:, 0:1] + 0 * self.dummy


def lerp_model(f: int) -> RestorationModel:
    card = {"name": "lerp", "task": "isotropic", "diffusion": {"parameterization": "x0", "clip": None,
                                                                 "steps": 3, "samples": 2},
            "tile": {"size": 64, "overlap": 16}, "isotropic": {"z_factor": f}}
    return RestorationModel(card=card, network=LerpNet(f))


# ---- data ---------------------------------------------------------------------------------------
def test_linear_interpolation_keeps_acquired_and_interpolates():
    vol = np.stack([np.full((4, 5), v, np.float32) for v in (0, 10, 40)])
    out = iso.linear_interpolation(vol, 5)
    assert out.shape == (11, 4, 5)
    np.testing.assert_allclose(out[::5, 0, 0], [0, 10, 40])
    np.testing.assert_allclose(out[:, 0, 0], [0, 2, 4, 6, 8, 10, 16, 22, 28, 34, 40], atol=1e-5)


def test_slice_triplets_follow_vemdiffuse_conventions():
    planes = np.arange(12, dtype=np.float32)[:, None, None] * np.ones((1, 3, 4), np.float32)
    cond, target, index = pairs.slice_triplets(planes, 4)
    assert cond.shape == (8 * 3, 2, 3, 4) and target.shape == (24, 1, 3, 4) and index.shape == (24,)
    a, k = cond[:, 1, 0, 0], target[:, 0, 0, 0] - cond[:, 1, 0, 0]
    np.testing.assert_array_equal(cond[:, 0, 0, 0], a + 4)  # channel 0 is the upper slice i+1
    np.testing.assert_array_equal(index, k - 1)  # 0-based: index k-1 is the slice at k/f
    assert set(index.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="too few"):
        pairs.slice_triplets(planes[:4], 4)


def test_training_data_routes_shapes():
    fib = load_fibsem()[:12, :40, :48]
    d = pairs.volume_examples(fib, 5)  # isotropic route, both directions along z
    assert d["condition"].shape == (2 * 7 * 4, 2, 40, 48) and d["target"].shape[1:] == (1, 40, 48)
    assert -1.5 < float(d["target"].min()) < -0.5 and 0.5 < float(d["target"].max()) < 1.5
    sstem = load_sstem()[:, :40, :64]  # 30 x 40 x 64, anisotropic: learn along y, planes (Z, X)
    a = pairs.volume_examples(sstem, 4, route="anisotropic", lateral_axis=1, both_directions=False)
    assert a["condition"].shape == (36 * 3, 2, 30, 64)
    np.testing.assert_allclose(a["target"][0, 0], a["target"][0, 0])  # finite
    x = pairs.volume_examples(sstem, 4, route="anisotropic", lateral_axis=2, both_directions=False)
    assert x["condition"].shape == (60 * 3, 2, 30, 40)
    with pytest.raises(ValueError, match="route"):
        pairs.volume_examples(sstem, 4, route="sideways")
    b = pairs.volume_examples(fib, 5, dims=3, depth_multiple=4)
    assert b["condition"].shape == (14, 1, 8, 40, 48) and "slice_index" not in b


# ---- inference ----------------------------------------------------------------------------------
def test_lerp_network_reproduces_linear_interpolation():
    """Checks the condition order and the 0-based slice index end to end through the sampler."""
    vol = load_fibsem()[::5][:4, :48, :56].astype(np.float32)
    res = reconstruct(vol, lerp_model(5), device="cpu")
    assert res.mean.shape == (16, 48, 56) and res.mean.dtype == np.float32
    np.testing.assert_allclose(res.mean, iso.linear_interpolation(vol, 5), atol=0.05)
    posterior = reconstruct(vol, lerp_model(5), device="cpu", estimate="posterior_mean")
    assert posterior.info["estimate"] == "posterior_mean"
    np.testing.assert_allclose(posterior.mean, res.mean, atol=0.05)


def test_ensemble_views_map_back_to_the_right_slices():
    """Every view (lateral rotations of a non-square plane, the gap read from the other side with
    its slice index mirrored) must land on the slice it estimates: an exact lerp model stays exact."""
    vol = load_fibsem()[::5][:3, :48, :56].astype(np.float32)
    for ensemble in (2, 8):
        res = reconstruct(vol, lerp_model(5), device="cpu", estimate="posterior_mean", ensemble=ensemble)
        assert res.info["ensemble"] == ensemble
        np.testing.assert_allclose(res.mean, iso.linear_interpolation(vol, 5), atol=1e-3)
    assert [iso.ensemble_member(m) for m in range(4)] == [(0, False), (0, True), (1, False), (1, True)]


def test_reconstruct_shapes_passthrough_uncertainty():
    vol = load_fibsem()[::5][:3, :40, :72]
    res = reconstruct(vol, tiny_model(), device="cpu", seed=3)
    assert res.mean.shape == (11, 40, 72) and res.mean.dtype == np.uint8
    np.testing.assert_array_equal(res.mean[::5], vol)  # acquired slices unchanged
    assert res.std.shape == res.mean.shape and res.std.dtype == np.float32
    assert np.all(res.std[::5] == 0)
    generated = np.ones(11, bool)
    generated[::5] = False
    assert float(res.std[generated].min()) >= 0 and float(res.std[generated].mean()) > 0
    assert res.aleatoric.shape == res.mean.shape
    assert res.info["voxel_scale"] == (0.2, 1.0, 1.0) and res.info["acquired"] == [0, 5, 10]
    again = reconstruct(vol, tiny_model(), device="cpu", seed=3)
    np.testing.assert_array_equal(again.mean, res.mean)  # seeded


def test_reconstruct_reads_zarr_lazily_and_streams_gaps(tmp_path):
    vol = load_fibsem()[::5][:4, :32, :32]
    store = zarr.create_array(store=str(tmp_path / "v.zarr"), shape=vol.shape, dtype=vol.dtype, chunks=(1, 32, 32))
    store[...] = vol
    gaps = list(restore_slices(store, tiny_model(), task="isotropic", device="cpu", samples=1))
    assert [g for g, _ in gaps] == [0, 1, 2]
    for _, r in gaps:
        assert r.mean.shape == (4, 32, 32) and r.std is None
    only = dict(restore_slices(store, tiny_model(), task="isotropic", device="cpu", samples=1, slices=[1]))
    np.testing.assert_array_equal(only[1].mean, dict(gaps)[1].mean)  # a gap does not depend on others


def test_cancel_keeps_finished_gaps():
    vol = load_fibsem()[::5][:4, :32, :32]
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1  # one network batch per gap here: stop in the second gap

    with pytest.raises(Cancelled) as info:
        reconstruct(vol, tiny_model(), device="cpu", samples=1, steps=1, batch_size=4, cancel=cancel)
    partial = info.value.partial
    assert partial is not None and partial.mean.shape[0] == 6 and partial.info["gaps"] == 1
    np.testing.assert_array_equal(partial.mean[0], vol[0])


def test_bad_inputs_say_what_to_do():
    model = tiny_model()
    with pytest.raises(ValueError, match="z-factor 5"):
        reconstruct(load_fibsem()[:3, :32, :32], model, z_factor=4, device="cpu")
    with pytest.raises(ValueError, match="volume"):
        reconstruct(load_fibsem()[0, :32, :32], model, device="cpu")
    with pytest.raises(ValueError, match="at least 2"):
        reconstruct(load_fibsem()[:1, :32, :32], model, device="cpu")
    no_factor = model_from_card({k: v for k, v in tiny_card().items() if k != "isotropic"})
    with pytest.raises(ValueError, match="--z-factor"):
        reconstruct(load_fibsem()[:3, :32, :32], no_factor, device="cpu")
    with pytest.raises(ValueError, match="isotropic model"):
        reconstruct(load_fibsem()[:3, :32, :32], model_from_card(dict(tiny_card(), task="denoise")), device="cpu")


def test_3d_variant_from_the_same_unet():
    model = tiny_model(dims=3, z_factor=4)
    assert model.network.dims == 3
    vol = load_fibsem()[::4][:3, :40, :48]
    res = reconstruct(vol, model, device="cpu", tile=32, overlap=8)
    assert res.mean.shape == (9, 40, 48) and res.info["network"] == "3d"
    np.testing.assert_array_equal(res.mean[::4], vol)
    assert float(res.std[1:4].mean()) > 0 and np.all(res.std[::4] == 0)
    posterior = reconstruct(vol, model, device="cpu", tile=32, overlap=8, estimate="posterior_mean")
    np.testing.assert_array_equal(posterior.std, res.std)  # same samples, another estimate of the mean
    assert not np.array_equal(posterior.mean, res.mean)


def test_published_vemdiffuse_checkpoint_reconstructs(tmp_path):
    """A checkpoint in vEMDiffuse's own layout loads as an isotropic model and runs (z-factor
    given, since the checkpoint does not say)."""
    model = load_model(REFERENCE / "vemdiffuse_unet_small_Network.pth")
    assert model.task == "isotropic" and model.network.slice_embedding
    vol = load_fibsem()[::4][:2, :32, :32]
    res = reconstruct(vol, model, z_factor=4, steps=1, samples=1, device="cpu")
    assert res.mean.shape == (5, 32, 32)
    np.testing.assert_array_equal(res.mean[::4], vol)


# ---- training -----------------------------------------------------------------------------------
def _short_training(data: dict, val: dict, card: dict, tmp_path, steps: int = 40, dims: int = 2) -> list[float]:
    torch.manual_seed(0)
    model = model_from_card(card)
    if dims == 3:
        train_set = pairs.BlockPairs(data["condition"], data["target"], patch=24)
        val_set = pairs.BlockPairs(val["condition"], val["target"], patch=24)
    else:
        train_set = PatchPairs(data["condition"], data["target"], patch=32, slice_index=data["slice_index"])
        val_set = PatchPairs(val["condition"], val["target"], patch=32, slice_index=val["slice_index"])
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-3, warmup=5, ema_decay=0.9, device="cpu",
                      val_every=steps, val_batch=8, checkpoint_every=10_000)
    trainer = Trainer(model, train_set, cfg, tmp_path / "run", val_data=val_set)
    before = trainer.validate()[0]
    trainer.run()
    return [before, trainer.history[-1]["val_loss"]]


def test_short_training_isotropic_route_lowers_validation_loss(tmp_path):
    fib = load_fibsem()[:, :64, :64]
    data = pairs.volume_examples(fib[:40], 5)
    val = pairs.volume_examples(fib[45:], 5, both_directions=False)  # disjoint slices
    before, after = _short_training(data, val, tiny_card(aleatoric=False), tmp_path)
    assert after < 0.7 * before


def test_short_training_anisotropic_route_lowers_validation_loss(tmp_path):
    sstem = load_sstem()[:, :, :96]  # 50 nm sections: learn along y (4 nm) in the (Z, X) planes
    data = pairs.volume_examples(sstem[:, :160], 4, route="anisotropic")
    val = pairs.volume_examples(sstem[:, 176:], 4, route="anisotropic", both_directions=False)
    before, after = _short_training(data, val, tiny_card(z_factor=4, aleatoric=False), tmp_path)
    assert after < 0.7 * before


def test_short_training_3d_variant_lowers_validation_loss(tmp_path):
    fib = load_fibsem()[:, :48, :48]
    data = pairs.volume_examples(fib[:40], 4, dims=3, depth_multiple=2)
    val = pairs.volume_examples(fib[45:], 4, dims=3, depth_multiple=2, both_directions=False)
    before, after = _short_training(data, val, tiny_card(dims=3, z_factor=4), tmp_path, steps=30, dims=3)
    assert after < 0.7 * before


def test_untrained_residual_network_starts_at_linear_interpolation():
    """kind residual_unet: x0 = linear interpolation + UNet, whose output layer starts at zero."""
    card = tiny_card(aleatoric=False)
    card["network"].update(kind="residual_unet", residual_z_factor=5)
    card["diffusion"]["clip"] = None
    model = model_from_card(card)
    vol = load_fibsem()[::5][:3, :32, :48].astype(np.float32)
    res = reconstruct(vol, model, device="cpu")
    np.testing.assert_allclose(res.mean, iso.linear_interpolation(vol, 5), atol=0.05)
    with pytest.raises(ValueError, match="residual_z_factor"):
        card["network"].pop("residual_z_factor")
        model_from_card(card)


def test_bundled_model_loads_by_name_and_reconstructs():
    model = load_model("isotropic-fibsem", task="isotropic")
    assert iso.model_z_factor(model) == 5
    vol = load_fibsem()[::5][:2, :32, :32]
    res = reconstruct(vol, model, device="cpu", steps=1)
    assert res.mean.shape == (6, 32, 32)
    np.testing.assert_array_equal(res.mean[::5], vol)
