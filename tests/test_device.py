"""The inference and training paths on the device under test (the ``device`` fixture: the CPU,
or CUDA under benchmarks/gpu_check.sh): autocast, channels_last, seeded noise moved to the
device, the out-of-memory fallback and AMP training."""
import numpy as np
import pytest
import torch

from test_tiling import tiny_model

from napari_emdiffuse.model import model_from_card
from napari_emdiffuse.noise import positional_noise
from napari_emdiffuse.api import restore
from napari_emdiffuse.sample_data import load_pair
from napari_emdiffuse.training.datasets import denoise_data
from napari_emdiffuse.training.presets import new_card
from napari_emdiffuse.training.trainer import TrainConfig, Trainer


def image(seed: int = 0, shape=(72, 88)) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_restore_on_the_device_is_repeatable_and_agrees_with_the_cpu(device, precision):
    model = tiny_model()
    kwargs = dict(tile=32, overlap=8, seed=2, precision=precision)
    a = restore(image(), model, device=str(device), **kwargs)
    b = restore(image(), model, device=str(device), **kwargs)
    assert a.info["device"] == str(device)
    np.testing.assert_array_equal(a.mean, b.mean)  # seeded noise and fixed tiling: the same result
    np.testing.assert_array_equal(a.std, b.std)
    cpu = restore(image(), model, device="cpu", **kwargs)
    # float32 differs between devices only by rounding; bf16 autocast by its 8-bit mantissa
    tol = 1.0 if precision == "fp32" else 4.0
    assert np.abs(a.mean.astype(float) - cpu.mean.astype(float)).mean() < tol / 4
    assert np.abs(a.mean.astype(float) - cpu.mean.astype(float)).max() <= 8 * tol


def test_chunks_of_an_image_restore_alike_on_the_device(device):
    """Noise is seeded by global position and moved to the device: a window of the image,
    restored at its place, draws the same noise as the whole."""
    full = positional_noise((0, 0), (96, 80), seed=1, stream=(0, 0))
    part = positional_noise((32, 16), (48, 48), seed=1, stream=(0, 0))
    on_device = torch.from_numpy(part).to(device)
    np.testing.assert_array_equal(on_device.cpu().numpy(), full[32:80, 16:64])


def test_out_of_memory_halves_the_tile_batch_until_it_fits(device, monkeypatch):
    """A batch the device cannot hold is retried at half the size; the result is the one a small
    batch gives from the start."""
    model = tiny_model()
    network = model.network
    forward = network.forward
    seen = []

    def limited(x, *args):
        seen.append(len(x))
        if len(x) > 3:
            raise torch.OutOfMemoryError("simulated: the tile batch does not fit")
        return forward(x, *args)

    monkeypatch.setattr(network, "forward", limited)
    kwargs = dict(tile=32, overlap=8, seed=4, precision="fp32", device=str(device), samples=2, steps=2)
    big = restore(image(1), model, batch_size=16, **kwargs)
    assert big.info["batch_size"] == 2 and max(seen) == 16
    small = restore(image(1), model, batch_size=2, **kwargs)
    np.testing.assert_allclose(big.mean.astype(float), small.mean.astype(float), atol=1)
    np.testing.assert_allclose(big.std, small.std, atol=1e-3 * float(small.std.max()) + 1e-6)


def test_training_steps_on_the_device_with_amp(device, tmp_path):
    noisy, clean = load_pair()
    data = denoise_data(noisy[:128, :128], clean[:128, :128], patch=32, check=False)
    card = new_card("denoise", "tiny", name="device-run")
    card["network"].update(inner_channel=8, channel_mults=[1, 2], norm_groups=4)
    torch.manual_seed(0)
    cfg = TrainConfig(steps=4, batch_size=4, lr=1e-3, warmup=1, val_every=4, checkpoint_every=100, val_batch=2,
                      device=str(device), amp=True, seed=0)
    trainer = Trainer(model_from_card(card), data.train, cfg, tmp_path, val_data=data.val)
    trainer.run()
    assert trainer.step == 4 and trainer.device.type == device.type
    assert trainer.scaler.is_enabled() == (device.type == "cuda")  # AMP's loss scaling on CUDA only
    assert len(trainer.history) == 4 and all(np.isfinite(h["loss"]) for h in trainer.history)
    assert (tmp_path / "weights.pt").exists()
