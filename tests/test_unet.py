"""The UNet: 1D/2D/3D shapes, heads, checkpointing, attention and mixed precision."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_emdiffuse.model import model_from_card
from napari_emdiffuse.nn import UNet
from napari_emdiffuse.nn.unet import AttentionBlock, GroupNorm32, ResBlock
from napari_emdiffuse.training.trainer import TrainConfig, Trainer

TINY = dict(inner_channel=8, channel_mults=(1, 2), res_blocks=1, attn_res=(2,), num_head_channels=8,
            norm_groups=4, dropout=0.0)


def tiny_unet(seed: int = 0, **kw) -> UNet:
    """A tiny UNet with every weight random: zero-initialised output layers would hide bugs."""
    torch.manual_seed(seed)
    net = UNet(**{**TINY, **kw})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return net


def _input(shape, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen), torch.rand(shape[0], generator=gen)


@pytest.mark.parametrize("dims, spatial", [(1, (32,)), (2, (16, 16)), (3, (8, 8, 8))])
def test_shapes_in_1d_2d_3d(dims, spatial):
    net = tiny_unet(dims=dims).eval()
    x, gamma = _input((2, 2, *spatial))
    with torch.no_grad():
        out = net(x, gamma)
    assert out.shape == (2, 1, *spatial)
    assert torch.isfinite(out).all() and out.abs().max() > 0
    # Batch items are independent (GroupNorm, not BatchNorm).
    with torch.no_grad():
        torch.testing.assert_close(net(x[:1], gamma[:1]), out[:1], rtol=1e-4, atol=1e-5)


def test_noise_level_changes_the_output():
    net = tiny_unet().eval()
    x, _ = _input((1, 2, 16, 16))
    with torch.no_grad():
        assert not torch.allclose(net(x, torch.tensor([0.1])), net(x, torch.tensor([0.9])))


def test_aleatoric_head_adds_a_logvar_channel():
    plain, aleatoric = tiny_unet(), tiny_unet(aleatoric=True)
    assert aleatoric.aleatoric and not plain.aleatoric
    x, gamma = _input((2, 2, 16, 16))
    with torch.no_grad():
        out = aleatoric.eval()(x, gamma)
    assert out.shape == (2, 2, 16, 16)
    assert any(k.startswith("logvar_out.") for k in aleatoric.state_dict())


def test_slice_embedding_requires_slice_index():
    net = tiny_unet(in_channel=3, slice_embedding=True).eval()
    x, gamma = _input((2, 3, 16, 16))
    with pytest.raises(ValueError, match="pass slice_index"):
        net(x, gamma)
    with torch.no_grad():
        a = net(x, gamma, torch.tensor([1.0, 1.0]))
        b = net(x, gamma, torch.tensor([1.0, 2.0]))
    assert a.shape == (2, 1, 16, 16)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])  # the slice index is seen by the network


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    plain = tiny_unet(seed=2).train()
    ckpt = tiny_unet(seed=2, use_checkpoint=True).train()
    x, gamma = _input((2, 2, 16, 16))

    calls = []
    forward = ResBlock._forward
    monkeypatch.setattr(ResBlock, "_forward", lambda self, *a: calls.append(1) or forward(self, *a))

    grads = []
    for net in (plain, ckpt):
        calls.clear()
        net.zero_grad()
        (net(x, gamma) ** 2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
        grads[-1]["calls"] = len(calls)
    n_blocks = sum(isinstance(m, ResBlock) for m in plain.modules())
    assert grads[0].pop("calls") == n_blocks
    assert grads[1].pop("calls") == 2 * n_blocks  # checkpointed blocks are recomputed in backward
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-6, msg=name)


def legacy_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """guided-diffusion's AttentionBlock with QKVAttentionLegacy, as EMDiffuse runs it."""
    b, c, *spatial = x.shape
    flat = x.reshape(b, c, -1)
    qkv = block.qkv(block.norm(flat))
    bs, width, length = qkv.shape
    ch = width // (3 * block.num_heads)
    q, k, v = qkv.reshape(bs * block.num_heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)
    return (flat + block.proj_out(a)).reshape(b, c, *spatial)


@pytest.mark.parametrize("spatial", [(12,), (6, 10), (4, 4, 6)])
def test_attention_equals_legacy_einsum(spatial):
    torch.manual_seed(0)
    block = AttentionBlock(channels=16, num_head_channels=8, groups=4)  # 2 heads
    torch.nn.init.normal_(block.proj_out.weight)  # zero-initialised, which would hide the attention
    x = torch.randn(3, 16, *spatial)
    with torch.no_grad():
        torch.testing.assert_close(block(x), legacy_attention(block, x), rtol=1e-5, atol=1e-5)


def test_group_norm_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    norm = GroupNorm32(4, 16)
    torch.nn.init.normal_(norm.weight)
    x = (torch.randn(2, 16, 8, 8) * 3 + 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
    assert y.dtype == torch.bfloat16
    expected = F.group_norm(x.float(), 4, norm.weight, norm.bias, norm.eps).bfloat16()
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_unet_under_bfloat16_autocast_matches_float32():
    net = tiny_unet(seed=3).eval()
    x, gamma = _input((2, 2, 16, 16))
    with torch.no_grad():
        ref = net(x, gamma)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x, gamma)
    assert low.dtype == torch.bfloat16
    err = float((low.float() - ref).abs().max() / ref.abs().max())
    assert err < 0.05


class PatchStub:
    """The two methods the trainer draws data through, for patches of any dimensionality."""

    def __init__(self, spatial):
        self.spatial = spatial

    def draw(self, batch, rng):
        target = torch.from_numpy(rng.uniform(-1, 1, (batch, 1, *self.spatial)).astype("float32"))
        return {"condition": target + 0.1 * torch.randn(target.shape), "target": target}

    def fixed_batch(self, n):
        return self.draw(n, np.random.default_rng(0))


@pytest.mark.parametrize("dims, spatial", [(1, (16,)), (2, (8, 8)), (3, (4, 4, 4))])
def test_trainer_trains_1d_2d_3d_networks(dims, spatial, tmp_path):
    """channels_last is a 2D-only memory format; the trainer must not force it on 1D/3D nets."""
    card = {"name": "t", "task": "denoise", "network": {"kind": "unet", "dims": dims, **TINY}}
    config = TrainConfig(device="cpu", batch_size=2, warmup=1)
    trainer = Trainer(model_from_card(card), PatchStub(spatial), config, run_dir=tmp_path)
    if dims == 2:
        assert trainer.network.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(trainer.train_step())
