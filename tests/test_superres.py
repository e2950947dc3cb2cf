"""Super-resolution: 2x2 mean binning, training pairs, the geometry of the condition (a network
that returns its condition gives exactly the bicubic baseline), output shapes for images and
stacks, the scale check, and a short training on real ssTEM that lowers the validation loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ConditionNet

from napari_emdiffuse.model import RestorationModel, model_from_card
from napari_emdiffuse.api import restore
from napari_emdiffuse.sample_data import load_sstem
from napari_emdiffuse.tasks import superres as sr
from napari_emdiffuse.evaluation import psnr
from napari_emdiffuse.training import pairs
from napari_emdiffuse.training.data import PatchPairs
from napari_emdiffuse.training.trainer import Trainer, TrainConfig


def superres(image, model, **kwargs):
    return restore(image, model, task="superres", **kwargs)


def condition_model(scale: int = 2) -> RestorationModel:
    card = {"name": "cond", "task": "superres", "superres": {"scale": scale},
            "diffusion": {"parameterization": "x0", "clip": None, "steps": 2, "samples": 2},
            "normalization": {"low": 0.0, "high": 100.0}, "tile": {"size": 64, "overlap": 16}}
    return RestorationModel(card=card, network=ConditionNet())


def tiny_card(**changes) -> dict:
    return {"name": "tiny-sr", "task": "superres", "superres": {"scale": 2},
            "network": {"in_channel": 2, "inner_channel": 8, "channel_mults": [1, 2], "res_blocks": 1,
                        "attn_res": [], "norm_groups": 4, "aleatoric": False},
            "diffusion": {"parameterization": "x0", "clip": [-1.5, 1.5], "steps": 2, "samples": 2},
            "tile": {"size": 64, "overlap": 16}, **changes}


def test_bin_mean_is_the_block_mean_and_drops_partial_edges():
    image = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    binned = sr.bin_mean(image, 2)
    assert binned.shape == (2, 3) and binned.dtype == np.float32
    assert binned[0, 0] == pytest.approx(np.mean([0, 1, 7, 8]))
    assert binned[1, 2] == pytest.approx(image[2:4, 4:6].mean())
    stack = np.stack([image, 2 * image])
    np.testing.assert_allclose(sr.bin_mean(stack, 2)[1], 2 * binned)
    assert sr.bin_mean(np.ones((8, 8), np.uint8), 4).shape == (2, 2)


def test_training_pairs_from_real_sstem():
    hr = load_sstem()[:3, :101, :96]
    cond, target = pairs.training_pairs(hr, 2)
    assert cond.shape == target.shape == (3, 1, 100, 96) and cond.dtype == np.float32
    # the condition is the bicubic upsampling of the binned image, in the same normalisation
    assert float(np.corrcoef(cond.ravel(), target.ravel())[0, 1]) > 0.8
    assert abs(float(cond.mean() - target.mean())) < 0.05


def test_condition_network_returns_the_bicubic_baseline():
    """The restore core's condition and this module's upsampling agree pixel for pixel."""
    hr = load_sstem()[0, :96, :128].astype(np.float32)
    lr = sr.bin_mean(hr, 2)
    res = superres(lr, condition_model(), device="cpu")
    assert res.mean.shape == (96, 128)
    np.testing.assert_allclose(res.mean, sr.upsample(lr, 2), atol=0.02)


def test_superres_shapes_for_images_and_stacks():
    torch.manual_seed(0)
    model = model_from_card(tiny_card())
    with torch.no_grad():
        for p in model.network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    image = load_sstem()[0, :40, :56]
    res = superres(image, model, device="cpu")
    assert res.mean.shape == (80, 112) and res.mean.dtype == np.uint8
    assert res.std.shape == (80, 112)
    stack = superres(load_sstem()[:2, :40, :56], model, device="cpu", samples=1)
    assert stack.mean.shape == (2, 80, 112) and stack.std is None


def test_scale_and_task_are_checked():
    model = condition_model(2)
    with pytest.raises(ValueError, match="--scale 2"):
        superres(np.zeros((16, 16), np.float32), model, scale=4)
    with pytest.raises(ValueError, match="superres model"):
        superres(np.zeros((16, 16), np.float32), model_from_card(dict(tiny_card(), task="denoise")))


def test_bicubic_baseline_beats_nearest_on_real_data():
    """Sanity of the baseline the bundled model is measured against."""
    hr = load_sstem()[0].astype(np.float32)
    lr = sr.bin_mean(hr, 2)
    nearest = np.repeat(np.repeat(lr, 2, 0), 2, 1)
    assert psnr(sr.bicubic_baseline(lr, 2), hr, 255.0) > psnr(nearest, hr, 255.0)


def test_short_training_on_real_sstem_lowers_validation_loss(tmp_path):
    stack = load_sstem()
    cond, target = pairs.training_pairs(stack[:, :160], 2)
    vcond, vtarget = pairs.training_pairs(stack[:, 176:], 2)  # disjoint rows
    torch.manual_seed(0)
    model = model_from_card(tiny_card())
    cfg = TrainConfig(steps=40, batch_size=4, lr=1e-3, warmup=5, ema_decay=0.9, device="cpu",
                      val_every=40, val_batch=8, checkpoint_every=10_000)
    trainer = Trainer(model, PatchPairs(cond, target, patch=32), cfg, tmp_path / "run",
                      val_data=PatchPairs(vcond, vtarget, patch=32))
    before = trainer.validate()[0]
    trainer.run()
    assert trainer.history[-1]["val_loss"] < 0.7 * before


def test_untrained_residual_network_starts_at_bicubic():
    card = tiny_card()
    card["network"]["kind"] = "residual_unet"
    card["diffusion"]["clip"] = None
    lr = sr.bin_mean(load_sstem()[0, :64, :96], 2)
    res = superres(lr, model_from_card(card), device="cpu")
    np.testing.assert_allclose(res.mean, sr.upsample(lr, 2), atol=0.05)


def test_bundled_model_loads_by_name_and_doubles_the_size():
    from napari_emdiffuse.loading import load_model

    model = load_model("superres-sstem", task="superres")
    assert sr.model_scale(model) == 2 and model.card["network"]["kind"] == "residual_unet"
    res = superres(load_sstem()[0, :32, :48], model, device="cpu", steps=1)
    assert res.mean.shape == (64, 96) and res.mean.dtype == np.uint8
