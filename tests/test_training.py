"""Training on the user's data: real EM crops, exact resume, safe checkpoints, stop requests."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_emdiffuse.loading import load_model
from napari_emdiffuse.model import model_from_card
from napari_emdiffuse.sample_data import load_pair
from napari_emdiffuse.training import runs
from napari_emdiffuse.training.data import PatchSet
from napari_emdiffuse.training.datasets import denoise_data, split_region
from napari_emdiffuse.training.presets import PRESETS, network_card, new_card
from napari_emdiffuse.training.trainer import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sem_data():
    noisy, clean = load_pair()
    return denoise_data(noisy[:256, :256], clean[:256, :256], patch=32, check=False)


def tiny_card(dropout: float = 0.0) -> dict:
    card = new_card("denoise", "tiny", name="test-run")
    card["network"].update(inner_channel=8, channel_mults=[1, 2], norm_groups=4, dropout=dropout)
    return card


def test_a_new_model_draws_the_samples_its_uncalibrated_map_needs():
    # the map of a model of one's own reads the aleatoric head; without one, the spread of 2 samples
    assert new_card("denoise", "tiny")["diffusion"]["samples"] == 1
    assert new_card("denoise", "tiny", aleatoric=False)["diffusion"]["samples"] == 2


def trainer(data, run_dir, card=None, **config) -> Trainer:
    cfg = dict(steps=6, batch_size=2, lr=1e-3, warmup=2, val_every=3, checkpoint_every=100,
               device="cpu", val_batch=2, seed=0)
    cfg.update(config)
    return Trainer(model_from_card(card or tiny_card()), data.train, TrainConfig(**cfg), run_dir, val_data=data.val)


def test_short_training_on_real_em_lowers_validation_loss(sem_data, tmp_path):
    torch.manual_seed(0)
    t = trainer(sem_data, tmp_path, steps=40, batch_size=4, lr=2e-3, warmup=5, val_every=10, val_batch=8,
                ema_decay=0.9)
    loss_before, psnr_before, _ = t.validate()
    updates = []
    t.callback = updates.append
    t.run()
    validations = [u for u in updates if u.val_loss is not None]
    assert [u.step for u in validations] == [10, 20, 30, 40]
    assert validations[-1].val_loss < loss_before - 0.5
    assert validations[-1].val_psnr > psnr_before + 5
    assert validations[-1].preview.shape == (32, 32)
    # The run folder is a model any loader takes.
    model = load_model(tmp_path, task="denoise")
    assert model.card["training"]["step"] == 40
    assert model.card["training"]["val_loss"] == pytest.approx(validations[-1].val_loss)


def test_resume_continues_the_same_loss_curve(sem_data, tmp_path):
    card = tiny_card(dropout=0.1)  # dropout draws from torch's global generator: it must resume too
    torch.manual_seed(1)
    whole = trainer(sem_data, tmp_path / "whole", card).run()

    torch.manual_seed(1)
    trainer(sem_data, tmp_path / "halves", card).run(until=3)
    torch.manual_seed(999)  # whatever the process did in between
    torch.rand(100)
    resumed = trainer(sem_data, tmp_path / "halves", card)
    resumed.resume()
    assert resumed.step == 3
    halves = resumed.run()

    assert [h["step"] for h in halves] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(whole, halves):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a.get("val_loss") == pytest.approx(b.get("val_loss"), abs=1e-6)
    final_whole = load_model(tmp_path / "whole").network.state_dict()
    final_halves = load_model(tmp_path / "halves").network.state_dict()
    for key in final_whole:
        torch.testing.assert_close(final_whole[key], final_halves[key], atol=1e-6, rtol=0)


def test_stop_request_ends_the_run_after_the_current_step_with_a_checkpoint(sem_data, tmp_path):
    t = trainer(sem_data, tmp_path)
    t.should_stop = lambda: t.step >= 2
    t.run()
    assert t.step == 2
    assert runs.has_state(tmp_path) and load_model(tmp_path).card["training"]["step"] == 2
    again = trainer(sem_data, tmp_path)
    again.resume()
    again.run()
    assert [h["step"] for h in again.history] == [1, 2, 3, 4, 5, 6]


def test_divergence_keeps_the_last_good_checkpoint(sem_data, tmp_path):
    t = trainer(sem_data, tmp_path, checkpoint_every=1)
    t.run(until=2)
    loss = t._loss
    t._loss = lambda batch, gen, *rest, **kw: loss(batch, gen, *rest, **kw) * float("nan")
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        t.run()
    assert load_model(tmp_path).card["training"]["step"] == 2


def test_fine_tuning_checks_the_condition_channels(sem_data, tmp_path):
    card = tiny_card()
    card["network"]["in_channel"] = 3  # an isotropic-style network: two condition slices
    with pytest.raises(ValueError, match="condition channel"):
        trainer(sem_data, tmp_path, card)


KILLER = textwrap.dedent("""
    import io, os, shutil, signal, sys
    import numpy as np, torch
    from napari_emdiffuse.model import model_from_card
    from napari_emdiffuse.training.datasets import denoise_data
    from napari_emdiffuse.training.presets import new_card
    from napari_emdiffuse.training.trainer import TrainConfig, Trainer

    root, points = sys.argv[1], sys.argv[2:]
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(96, 96)).astype(np.float32)
    data = denoise_data(clean + rng.normal(size=clean.shape).astype(np.float32), clean, patch=32, check=False)
    card = new_card("denoise", "tiny", name="killed")
    card["network"].update(inner_channel=8, channel_mults=[1, 2], norm_groups=4)
    cfg = TrainConfig(steps=3, batch_size=2, warmup=1, val_every=100, checkpoint_every=100, device="cpu")
    good = os.path.join(root, "good")
    trainer = Trainer(model_from_card(card), data.train, cfg, good, val_data=data.val)
    trainer.run(until=1)  # the last good checkpoint: step 1

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    for point in points:
        run = os.path.join(root, point)
        shutil.copytree(good, run)
        if os.fork() == 0:  # the child makes step 2, then dies inside its checkpoint write
            trainer.run_dir = type(trainer.run_dir)(run)
            kind, index = point.split("-")
            calls = [0]
            if kind == "save":  # half the bytes of the index-th torch.save reach the disk
                real = torch.save
                def save(obj, f, *a, **k):
                    if calls[0] == int(index):
                        buf = io.BytesIO(); real(obj, buf)
                        with open(f, "wb") as out:
                            out.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                        die()
                    calls[0] += 1
                    return real(obj, f, *a, **k)
                torch.save = save
            else:  # killed just before the index-th rename into place
                real = os.replace
                def replace(a, b):
                    if calls[0] == int(index):
                        die()
                    calls[0] += 1
                    return real(a, b)
                os.replace = replace
            trainer.run(until=2)
            os._exit(3)  # not reached when the kill point was hit
        _, status = os.wait()
        assert os.WIFSIGNALED(status), (point, status)
""")

# A checkpoint is two torch.save calls (state, weights) and five renames (state, next weights,
# card, weights, card): a kill at any of them must leave a run that loads and resumes.
KILL_POINTS = ["save-0", "save-1", "replace-0", "replace-1", "replace-2", "replace-3", "replace-4"]


def test_a_kill_during_a_checkpoint_write_leaves_the_last_good_checkpoint_loadable(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # one thread: safe to fork
    done = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path), *KILL_POINTS], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    clean = np.random.default_rng(0).normal(size=(96, 96))
    data = denoise_data(clean, clean, patch=32, check=False)
    for point in KILL_POINTS:
        run = tmp_path / point
        model = load_model(run)  # the card names complete weights with the hash it records
        step = model.card["training"]["step"]
        assert step in (1, 2), point
        resumed = Trainer(model_from_card(model.card), data.train, TrainConfig(steps=3, device="cpu"), run)
        resumed.resume()
        assert resumed.step in (1, 2), point
        assert not list(run.glob(".*.tmp")), point  # resume cleared the half-written files
        if step == 2:  # a card at step 2 means the step-2 state was already safely in place
            assert resumed.step == 2, point


def test_validation_region_never_overlaps_training_crops():
    train, val = split_region(256, patch=32, val_fraction=0.2)
    assert train == slice(0, 189) and val == slice(205, 256)  # 16 px apart
    with pytest.raises(ValueError, match="smaller patch size"):
        split_region(80, patch=64, val_fraction=0.2)
    # Marked rows show which rows each split's crops come from.
    clean = np.tile(np.arange(256, dtype=np.float32)[:, None], (1, 64))
    data = denoise_data(clean, clean, patch=16, check=False, normalization={"low": 0, "high": 100})
    rows = lambda pairs: np.unique(np.round((pairs.target[:, 0, :, 0] + 1) / 2 * 255))
    assert rows(data.train).max() < rows(data.val).min() - 15
    batch = data.train.draw(64, np.random.default_rng(0))
    assert batch["target"].max() <= (188 / 255) * 2 - 1 + 1e-6  # crops stay inside the training rows


def test_flips_and_rotations_are_the_same_for_condition_and_target():
    img = np.random.default_rng(1).normal(size=(128, 128)).astype(np.float32)
    data = denoise_data(img, img, patch=32, check=False)
    batch = data.train.draw(32, np.random.default_rng(2))
    torch.testing.assert_close(batch["condition"], batch["target"])


def test_images_of_different_sizes_train_together():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(128, 96)), rng.normal(size=(200, 160))
    data = denoise_data([a, b], [a, b], patch=32, check=False)
    assert isinstance(data.train, PatchSet)
    assert data.train.draw(5, rng)["condition"].shape == (5, 1, 32, 32)
    assert data.val.fixed_batch(3)["target"].shape == (3, 1, 32, 32)


def test_base_preset_is_the_published_emdiffuse_network():
    from napari_emdiffuse.model import build_network

    net = build_network(network_card("base"))
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(15.7e6, rel=0.01)
    assert set(PRESETS) == {"tiny", "small", "base"}


def test_warm_up_then_cosine_learning_rate():
    from napari_emdiffuse.training.trainer import lr_at

    cfg = TrainConfig(steps=110, lr=1e-3, warmup=10)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(0.5e-3)  # half-way through the cosine
    assert lr_at(110, cfg) == pytest.approx(0.0, abs=1e-12)
    rates = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_gradient_accumulation_averages_the_micro_batches(sem_data, tmp_path):
    t = trainer(sem_data, tmp_path, grad_accum=3)
    drawn = []
    draw = t.data.draw
    t.data.draw = lambda batch, rng: drawn.append(batch) or draw(batch, rng)
    loss = t.train_step()
    assert drawn == [2, 2, 2] and t.step == 1 and np.isfinite(loss)


def test_fine_tuning_an_emdiffuse_checkpoint(tmp_path):
    """A published-format EMDiffuse-n network (eps-prediction, no aleatoric head) continues training
    on real SEM crops; the run folder is then a model of our own format."""
    from napari_emdiffuse.training import session

    checkpoint = REPO / "tests" / "data" / "emdiffuse" / "emdiffuse_unet2d_small_Network.pth"
    noisy, clean = load_pair()
    inputs = {"noisy": noisy[:128, :128], "clean": clean[:128, :128], "check": False}
    t, _ = session.prepare("denoise", tmp_path / "tuned", inputs, base=str(checkpoint),
                           settings={"steps": 2, "batch_size": 2, "patch": 32, "device": "cpu"})
    assert t.model.diffusion["parameterization"] == "eps" and not t.model.aleatoric
    before = {k: v.clone() for k, v in t.network.state_dict().items()}
    t.run()
    tuned = load_model(tmp_path / "tuned", task="denoise")
    assert tuned.card["training"]["fine_tuned_from"].endswith("emdiffuse_unet2d_small_Network.pth")
    changed = [k for k, v in t.network.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the weights moved from the checkpoint's


def test_bf16_training_on_the_cpu_runs_in_bf16_and_lowers_the_loss(sem_data, tmp_path, monkeypatch):
    seen = []
    original = torch.nn.Conv2d.forward

    def conv(self, x):
        out = original(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "forward", conv)
    t = trainer(sem_data, tmp_path, steps=30, batch_size=4, lr=2e-3, warmup=5, val_every=30, precision="bf16")
    loss_before = t.validate()[0]
    t.run()
    assert torch.bfloat16 in seen  # the convolutions ran under bf16 autocast
    assert t.validate()[0] < loss_before - 0.3
    with pytest.raises(ValueError, match="use auto, bf16 or fp32"):
        TrainConfig(precision="fp8")


def test_a_chosen_fraction_of_noise_draws_sits_at_sigma_max():
    from napari_emdiffuse.training.noise import draw_sigmas

    for kind, fraction in (("loguniform_max", 0.25), ("loguniform_max:0.5", 0.5)):
        sig = draw_sigmas(20_000, kind, torch.Generator().manual_seed(0), 0.002, 80.0)
        assert float((sig == 80.0).float().mean()) == pytest.approx(fraction, abs=0.02)
        assert float(sig.min()) >= 0.002
    with pytest.raises(ValueError, match="fraction"):
        draw_sigmas(4, "loguniform_max:2", torch.Generator(), 0.002, 80.0)
