"""``emdiffuse denoise`` and ``emdiffuse models`` end to end on a real SEM crop with a tiny
random-init model (so the tests do not depend on the bundled demo model being trained)."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
import zarr

from conftest import run_cli
from napari_emdiffuse.io import read_voxel_size
from napari_emdiffuse.model import model_from_card
from napari_emdiffuse.sample_data import load_pair
from napari_emdiffuse.training.runs import save_model

REPO = Path(__file__).resolve().parents[1]
VEMDIFFUSE = Path(__file__).parent / "data" / "emdiffuse" / "vemdiffuse_unet_small_Network.pth"

TINY_CARD = {
    "name": "tiny-denoise", "task": "denoise", "description": "tiny random-init test model",
    "network": {"kind": "unet", "in_channel": 2, "out_channel": 1, "inner_channel": 8, "channel_mults": [1, 2],
                "res_blocks": 1, "attn_res": [], "num_head_channels": 8, "norm_groups": 4, "aleatoric": True},
    "diffusion": {"parameterization": "x0", "sampler": "dpmpp_2m", "steps": 2, "samples": 2},
    "tile": {"size": 128, "overlap": 16},
    "uncertainty": {"threshold": 0.2},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    torch.manual_seed(0)
    model = model_from_card(TINY_CARD)
    torch.nn.init.normal_(model.network.out[-1].weight, std=0.1)  # zero-init output would make it trivial
    run = tmp_path_factory.mktemp("model") / "run"
    save_model(TINY_CARD, model.network.state_dict(), run)
    return run


@pytest.fixture
def em_input(tmp_path):
    noisy, _ = load_pair()
    path = tmp_path / "input.tif"
    tifffile.imwrite(path, np.asarray(noisy[200:296, 300:428]))  # 96 x 128 real SEM crop
    return path


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_denoise_writes_result_and_uncertainty(tmp_path, em_input, tiny_run, capsys):
    before = digest(em_input)
    out = tmp_path / "out.tif"
    code, stdout, stderr = run_cli(capsys, "denoise", em_input, "-o", out, "--model", tiny_run, "--seed", 3)
    assert code == 0, stderr
    result = tifffile.imread(out)
    assert result.dtype == np.uint8 and result.shape == (96, 128)
    assert result.std() > 0  # an image, not a constant (random weights: no likeness to the input expected)
    std = tifffile.imread(tmp_path / "out_std.tif")
    assert std.dtype == np.float32 and std.shape == (96, 128)
    assert (std >= 0).all() and std.max() > 0
    aleatoric = tifffile.imread(tmp_path / "out_aleatoric.tif")
    assert aleatoric.dtype == np.float32 and (aleatoric > 0).all()
    mask = tifffile.imread(tmp_path / "out_mask.tif")
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert digest(em_input) == before
    summary = stdout.strip().splitlines()
    assert len(summary) == 1
    assert "96x128" in summary[0] and "tiny-denoise" in summary[0] and "2 samples x 2 steps" in summary[0]
    assert f"{100 * mask.mean():.1f}% unreliable" in summary[0]
    assert stderr == ""  # no progress bar when stderr is not a terminal


def test_single_sample_writes_no_std(tmp_path, em_input, tiny_run, capsys):
    out = tmp_path / "one.tif"
    code, _, stderr = run_cli(capsys, "denoise", em_input, "-o", out, "--model", tiny_run, "--samples", "1",
                              "--steps", "1", "--sampler", "ddim")
    assert code == 0, stderr
    assert out.is_file() and not (tmp_path / "one_std.tif").exists()


def test_zarr_stack_in_and_out(tmp_path, tiny_run, capsys):
    noisy, _ = load_pair()
    stack = np.stack([noisy[:48, :64], noisy[48:96, :64]]).astype(np.uint16) * 100
    z = zarr.create_array(store=str(tmp_path / "stack.zarr"), shape=stack.shape, dtype=stack.dtype,
                          chunks=(1, 48, 64), zarr_format=2)
    z[:] = stack
    z.attrs["voxel_size"] = [0.03, 0.005, 0.005]
    code, _, stderr = run_cli(capsys, "denoise", tmp_path / "stack.zarr", "-o", tmp_path / "den.zarr",
                              "--model", tiny_run, "--steps", "1")
    assert code == 0, stderr
    result = zarr.open_group(str(tmp_path / "den.zarr"), mode="r")  # the layout of a streamed run's store
    assert result["0"].shape == (2, 48, 64) and result["0"].dtype == np.uint16
    assert read_voxel_size(tmp_path / "den.zarr") == (0.03, 0.005, 0.005)
    assert zarr.open_group(str(tmp_path / "den_std.zarr"), mode="r")["0"].dtype == np.float32


def test_default_model_is_the_demo_preset(tmp_path, em_input, tiny_run, monkeypatch, capsys):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_run / "weights.pt", models / "weights.pt")
    card = yaml.safe_load((tiny_run / "card.yaml").read_text())
    (models / "demo-denoise.yaml").write_text(yaml.safe_dump(dict(card, name="demo-denoise")))
    monkeypatch.setenv("EMDIFFUSE_MODELS_DIR", str(models))
    code, stdout, stderr = run_cli(capsys, "denoise", em_input, "-o", tmp_path / "out.tif")
    assert code == 0, stderr
    assert "with demo-denoise, 2 samples x 2 steps" in stdout
    assert (tmp_path / "out_std.tif").is_file()  # the demo card's default is K >= 2

    code, stdout, _ = run_cli(capsys, "models")
    assert code == 0
    header, row = stdout.strip().splitlines()
    assert header.split()[:5] == ["NAME", "TASK", "SAMPLER", "STEPS", "SAMPLES"]
    assert row.split()[:5] == ["demo-denoise", "denoise", "dpmpp_2m", "2", "2"]
    assert "tiny random-init test model" in row


def test_module_entry_point_in_a_subprocess(tmp_path, em_input, tiny_run):
    out = tmp_path / "sub.tif"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "napari_emdiffuse.cli", "denoise", str(em_input), "-o", str(out),
                           "--model", str(tiny_run), "--steps", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert tifffile.imread(out).shape == (96, 128) and (tmp_path / "sub_std.tif").is_file()
    assert "Traceback" not in proc.stderr


# --- bad input: exit status 2, one line on stderr, INPUT untouched, no OUTPUT -------------------------

def assert_fails(capsys, argv, *expected, inputs=(), dash=True):
    before = {p: digest(p) for p in inputs if Path(p).is_file()}
    code, _, stderr = run_cli(capsys, *argv)
    lines = stderr.strip().splitlines()
    assert code == 2
    assert len(lines) == 1, stderr
    assert lines[0].startswith("emdiffuse: error: ")
    assert " — " in lines[0] or not dash  # <what is wrong> — <what to do>
    for text in expected:
        assert text in lines[0]
    assert {p: digest(p) for p in before} == before
    return lines[0]


def no_outputs(folder):
    return not [p for p in Path(folder).iterdir() if p.name.startswith(("out", ".out"))]


def test_missing_input(tmp_path, tiny_run, capsys):
    assert_fails(capsys, ["denoise", tmp_path / "absent.tif", "-o", tmp_path / "out.tif", "--model", tiny_run],
                 "absent.tif does not exist", "check the INPUT path")
    assert no_outputs(tmp_path)


def test_unreadable_input(tmp_path, tiny_run, capsys):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    assert_fails(capsys, ["denoise", bad, "-o", tmp_path / "out.tif", "--model", tiny_run],
                 "cannot read broken.tif", "valid TIFF", inputs=[bad])
    assert no_outputs(tmp_path)


def test_rgb_input(tmp_path, em_input, tiny_run, capsys):
    rgb = tmp_path / "colour.tif"
    tifffile.imwrite(rgb, np.stack([tifffile.imread(em_input)] * 3, axis=-1), photometric="rgb")
    assert_fails(capsys, ["denoise", rgb, "-o", tmp_path / "out.tif", "--model", tiny_run],
                 "colour.tif is RGB", "convert it to grayscale first", inputs=[rgb])
    assert no_outputs(tmp_path)


def test_rgb_array_without_photometric_tag(tmp_path, em_input, tiny_run, capsys):
    rgba = tmp_path / "rgba.tif"
    tifffile.imwrite(rgba, np.stack([tifffile.imread(em_input)] * 4, axis=-1), photometric="minisblack")
    assert_fails(capsys, ["denoise", rgba, "-o", tmp_path / "out.tif", "--model", tiny_run],
                 "rgba.tif is RGBA (H, W, 4)", "grayscale", inputs=[rgba])


def test_four_dimensional_input(tmp_path, tiny_run, capsys):
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (2, 5, 32, 32), dtype=np.uint8),
                     photometric="minisblack")
    assert_fails(capsys, ["denoise", path, "-o", tmp_path / "out.tif", "--model", tiny_run],
                 "hyper.tif has 4 dimensions", "split channels or time points", inputs=[path])
    assert no_outputs(tmp_path)


def test_nan_input(tmp_path, em_input, tiny_run, capsys):
    path = tmp_path / "holes.tif"
    image = tifffile.imread(em_input).astype(np.float32)
    image[10, 10] = np.nan
    tifffile.imwrite(path, image)
    assert_fails(capsys, ["denoise", path, "-o", tmp_path / "out.tif", "--model", tiny_run],
                 "holes.tif contains NaN", "replace them", inputs=[path])
    assert no_outputs(tmp_path)


def test_constant_input(tmp_path, tiny_run, capsys):
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, np.full((64, 64), 9, np.uint8))
    assert_fails(capsys, ["denoise", path, "-o", tmp_path / "out.tif", "--model", tiny_run],
                 "flat.tif is constant", "nothing to restore", inputs=[path])
    assert no_outputs(tmp_path)


def test_unreadable_checkpoint(tmp_path, em_input, capsys):
    fake = tmp_path / "best_Network.pth"
    fake.write_bytes(b"\x00not a checkpoint")
    assert_fails(capsys, ["denoise", em_input, "-o", tmp_path / "out.tif", "--model", fake],
                 "best_Network.pth is not a readable weights file", inputs=[em_input])
    assert no_outputs(tmp_path)


def test_wrong_task_checkpoint(tmp_path, em_input, capsys):
    line = assert_fails(capsys, ["denoise", em_input, "-o", tmp_path / "out.tif", "--model", VEMDIFFUSE],
                        "isotropic", "not a denoise model", inputs=[em_input])
    assert "emdiffuse models" in line
    assert no_outputs(tmp_path)


def test_unknown_model_name(tmp_path, em_input, capsys):
    assert_fails(capsys, ["denoise", em_input, "-o", tmp_path / "out.tif", "--model", "no-such-model"],
                 "no model file or preset named 'no-such-model'", inputs=[em_input])


@pytest.mark.parametrize("spelling", ["same", "dotted"])
def test_output_equal_to_input(tmp_path, em_input, tiny_run, capsys, spelling):
    target = em_input if spelling == "same" else tmp_path / "sub" / ".." / em_input.name
    (tmp_path / "sub").mkdir(exist_ok=True)
    assert_fails(capsys, ["denoise", em_input, "-o", target, "--model", tiny_run],
                 "would overwrite the input", "choose another OUTPUT name", inputs=[em_input])


def test_side_output_equal_to_input(tmp_path, em_input, tiny_run, capsys):
    source = tmp_path / "result_std.tif"
    shutil.copy(em_input, source)
    assert_fails(capsys, ["denoise", source, "-o", tmp_path / "result.tif", "--model", tiny_run],
                 "result_std.tif would overwrite the input", inputs=[source])
    assert not (tmp_path / "result.tif").exists()


@pytest.mark.parametrize("which", ["input", "output"])
def test_unknown_extension(tmp_path, em_input, tiny_run, capsys, which):
    source, out = em_input, tmp_path / "out.tif"
    if which == "input":
        source = tmp_path / "picture.png"
        shutil.copy(em_input, source)
    else:
        out = tmp_path / "out.jpg"
    assert_fails(capsys, ["denoise", source, "-o", out, "--model", tiny_run],
                 "unknown image format", "use TIFF (.tif, .tiff) or zarr (.zarr)", inputs=[source])
    assert no_outputs(tmp_path)


def test_bad_option_value_from_the_core(tmp_path, em_input, tiny_run, capsys):
    assert_fails(capsys, ["denoise", em_input, "-o", tmp_path / "out.tif", "--model", tiny_run, "--sampler", "magic"],
                 "unknown sampler 'magic'", inputs=[em_input], dash=False)  # the core's own wording
    assert no_outputs(tmp_path)
