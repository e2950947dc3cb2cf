"""``emdiffuse train`` end to end on real EM crops: the run folder works as --model, resumes,
fine-tunes; misregistered pairs are refused with what to do."""
import os
import re
import signal

import pytest
import tifffile
import torch

from conftest import run_cli
from napari_emdiffuse.cli.train_cmd import StopOnInterrupt
from napari_emdiffuse.loading import load_model
from napari_emdiffuse.sample_data import load_fibsem, load_pair, load_sstem

FAST = ["--steps", "2", "--patch", "32", "--batch-size", "2"]


@pytest.fixture(scope="module")
def sem_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sem")
    noisy, clean = load_pair()
    paths = {"noisy": folder / "noisy.tif", "clean": folder / "clean.tif", "shifted": folder / "shifted.tif"}
    tifffile.imwrite(paths["noisy"], noisy[:128, :160])
    tifffile.imwrite(paths["clean"], clean[:128, :160])
    tifffile.imwrite(paths["shifted"], clean[7:135, :160])  # the same field, 7 rows off
    return paths


def state_history(run):
    return torch.load(run / "state.pt", weights_only=True)["history"]


def test_train_denoise_then_use_the_run_folder_as_model(sem_files, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "denoise", "--input", sem_files["noisy"], "--target", sem_files["clean"],
                             "-o", run, *FAST, "--seed", "3", "--device", "cpu", "--precision", "bf16")
    assert code == 0, err
    assert "steps 0-2 of 2" in out and f"--model {run}" in out and "validation loss" in out
    model = load_model(run, task="denoise")
    assert model.card["training"]["step"] == 2 and model.card["training"]["config"]["seed"] == 3
    assert model.card["training"]["config"]["precision"] == "bf16"
    assert model.card["training"]["data"]["pairs"][0]["noisy"] == str(sem_files["noisy"])

    restored = tmp_path / "restored.tif"
    code, _, err = run_cli(capsys, "denoise", sem_files["noisy"], "-o", restored, "--model", run, "--steps", "1",
                           "--samples", "1", "--device", "cpu")
    assert code == 0, err
    assert tifffile.imread(restored).shape == (128, 160)


def test_resume_continues_and_an_existing_run_is_never_overwritten(sem_files, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "denoise", "--input", sem_files["noisy"], "--target", sem_files["clean"], "-o", run]
    assert run_cli(capsys, *args, *FAST)[0] == 0
    first = state_history(run)
    code, _, err = run_cli(capsys, *args, *FAST)
    assert code == 2 and "already holds a training run" in err and "--resume" in err
    code, out, err = run_cli(capsys, *args, "--steps", "4", "--resume")  # patch and batch come from the run
    assert code == 0, err
    assert "steps 2-4 of 4" in out
    history = state_history(run)
    assert [h["step"] for h in history] == [1, 2, 3, 4] and history[:2] == first
    assert load_model(run).card["training"]["config"]["batch_size"] == 2
    code, _, err = run_cli(capsys, "train", "denoise", "--input", sem_files["noisy"], "--target", sem_files["clean"],
                           "-o", tmp_path / "nothing", "--resume")
    assert code == 2 and "no training run to resume" in err


def test_misregistered_pair_is_refused_then_registered_on_request(sem_files, tmp_path, capsys):
    args = ["train", "denoise", "--input", sem_files["noisy"], "--target", sem_files["shifted"], "-o", tmp_path / "run", *FAST]
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    row_offset = float(re.search(r"offset from the input by \((-?[\d.]+), -?[\d.]+\) px", err).group(1))
    assert 6 <= row_offset <= 8 and "--register" in err
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli(capsys, *args, "--register")
    assert code == 0, err
    assert "aligned 1 misregistered image" in err and "the pair is registered" in err


def test_fine_tuning_starts_from_the_given_model(sem_files, tmp_path, capsys):
    base = tmp_path / "base"
    common = ["train", "denoise", "--input", sem_files["noisy"], "--target", sem_files["clean"], *FAST]
    assert run_cli(capsys, *common, "-o", base)[0] == 0
    code, _, err = run_cli(capsys, *common, "-o", tmp_path / "tuned", "--model", base, "--lr", "1e-5")
    assert code == 0, err
    tuned = load_model(tmp_path / "tuned")
    assert tuned.card["training"]["fine_tuned_from"].startswith(str(base))
    assert tuned.name == "my-denoise-finetuned"
    code, _, err = run_cli(capsys, *common, "-o", tmp_path / "wrong", "--model", base, "--resume")
    assert code == 2 and "drop the base model" in err


def test_train_superres_from_high_resolution_images(tmp_path, capsys):
    hr = tmp_path / "hr.tif"
    tifffile.imwrite(hr, load_sstem()[:4, :128, :128], photometric="minisblack")
    code, _, err = run_cli(capsys, "train", "superres", "--target", hr, "-o", tmp_path / "run", *FAST)
    assert code == 0, err
    model = load_model(tmp_path / "run", task="superres")
    assert model.card["superres"]["scale"] == 2
    assert model.network.in_channel == 2


@pytest.mark.parametrize("route", ["isotropic", "anisotropic"])
def test_train_isotropic_both_routes(route, tmp_path, capsys):
    volume = tmp_path / "volume.tif"
    # FIB-SEM is isotropic; the ssTEM stack is the anisotropic case (30 sections of 256 x 256).
    tifffile.imwrite(volume, load_fibsem()[:24, :96, :96] if route == "isotropic" else load_sstem()[:, :96, :96],
                     photometric="minisblack")
    extra = ["--anisotropic"] if route == "anisotropic" else []
    code, _, err = run_cli(capsys, "train", "isotropic", "--volume", volume, "--z-factor", "3", *extra,
                           "-o", tmp_path / "run", *FAST)
    assert code == 0, err
    model = load_model(tmp_path / "run", task="isotropic")
    assert model.card["isotropic"] == {"z_factor": 3, "route": route, "slice_index": "0-based (k-1 for the slice at k/f)"}
    assert model.network.in_channel == 3 and model.network.slice_embedding


def test_bad_options_get_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.tif"
    code, _, err = run_cli(capsys, "train", "denoise", "--input", missing, "--target", missing, "-o", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err


def test_first_ctrl_c_asks_to_stop_and_the_second_interrupts():
    with StopOnInterrupt() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
