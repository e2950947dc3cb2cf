"""``emdiffuse superres`` and ``emdiffuse isotropic`` end to end on real EM crops with tiny
random-init models: shapes, voxel sizes in TIFF and zarr, the _std output, acquired slices
passing through, and bad input ending in one line and exit status 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from conftest import run_cli, write_tiny_run
from napari_emdiffuse.io import read_image, read_voxel_size, write_image
from napari_emdiffuse.sample_data import load_fibsem, load_sstem

REPO = Path(__file__).resolve().parents[1]


def anisotropic_volume():
    """Every 5th slice of the real 10 nm FIB-SEM crop: 50 nm sections."""
    return load_fibsem()[::5][:4, :48, :64]


def test_superres_tiff_shape_voxel_size_and_std(tmp_path, capsys, sr_run):
    source = tmp_path / "lr.tif"
    write_image(source, load_sstem()[0, :40, :56], voxel_size=(8.0, 8.0))
    code, out, err = run_cli(capsys, "superres", source, "-o", tmp_path / "hr.tif", "--model", sr_run,
                             "--samples", 2, "--steps", 2, "--seed", 1, "--device", "cpu", "--scale", 2)
    assert code == 0, err
    hr = tifffile.imread(tmp_path / "hr.tif")
    assert hr.shape == (80, 112) and hr.dtype == np.uint8
    assert read_voxel_size(tmp_path / "hr.tif") == pytest.approx((4.0, 4.0))
    assert tifffile.imread(tmp_path / "hr_std.tif").shape == (80, 112)
    assert "superres" in out


def test_superres_stack_to_zarr(tmp_path, capsys, sr_run):
    source = tmp_path / "lr.zarr"
    write_image(source, load_sstem()[:2, :32, :48], voxel_size=(50.0, 8.0, 8.0))
    code, _, err = run_cli(capsys, "superres", source, "-o", tmp_path / "hr.zarr", "--model", sr_run,
                           "--samples", 1, "--device", "cpu")
    assert code == 0, err
    assert read_image(tmp_path / "hr.zarr").shape == (2, 64, 96)
    assert read_voxel_size(tmp_path / "hr.zarr") == pytest.approx((50.0, 4.0, 4.0))
    assert not (tmp_path / "hr_std.zarr").exists()  # one sample: no spread to report


def test_superres_wrong_scale_is_one_line(tmp_path, capsys, sr_run):
    source = tmp_path / "lr.tif"
    tifffile.imwrite(source, load_sstem()[0, :32, :32])
    code, out, err = run_cli(capsys, "superres", source, "-o", tmp_path / "hr.tif", "--model", sr_run, "--scale", 4)
    assert code == 2 and err.count("\n") == 1 and "--scale 2" in err
    assert not (tmp_path / "hr.tif").exists()


def test_isotropic_tiff_shape_voxel_size_passthrough_and_std(tmp_path, capsys, iso_run):
    vol = anisotropic_volume()
    source = tmp_path / "aniso.tif"
    write_image(source, vol, voxel_size=(50.0, 10.0, 10.0))
    code, out, err = run_cli(capsys, "isotropic", source, "-o", tmp_path / "iso.tif", "--model", iso_run,
                             "--z-factor", 5, "--samples", 2, "--steps", 2, "--seed", 0, "--device", "cpu")
    assert code == 0, err
    iso = tifffile.imread(tmp_path / "iso.tif")
    assert iso.shape == (16, 48, 64) and iso.dtype == np.uint8
    np.testing.assert_array_equal(iso[::5], vol)
    assert read_voxel_size(tmp_path / "iso.tif") == pytest.approx((10.0, 10.0, 10.0))
    std = tifffile.imread(tmp_path / "iso_std.tif")
    assert std.shape == iso.shape and np.all(std[::5] == 0) and float(std[1:5].mean()) > 0
    assert "z-factor 5" in out and "z spacing 10" in out


def test_isotropic_estimate_and_ensemble_reach_the_core(tmp_path, capsys, iso_run):
    from napari_emdiffuse.loading import load_model
    from napari_emdiffuse.api import restore as reconstruct

    vol = anisotropic_volume()[:2, :32, :40]
    source = tmp_path / "aniso.tif"
    write_image(source, vol)
    code, _, err = run_cli(capsys, "isotropic", source, "-o", tmp_path / "iso.tif", "--model", iso_run,
                           "--samples", 1, "--steps", 1, "--estimate", "posterior_mean", "--ensemble", 2,
                           "--device", "cpu")
    assert code == 0, err
    expected = reconstruct(vol, load_model(iso_run), samples=1, steps=1, estimate="posterior_mean", ensemble=2,
                           device="cpu")
    single = reconstruct(vol, load_model(iso_run), samples=1, steps=1, estimate="posterior_mean", device="cpu")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "iso.tif"), expected.mean)
    assert not np.array_equal(expected.mean, single.mean)


def test_isotropic_zarr_output_has_the_z_spacing_as_ome_scale(tmp_path, capsys, iso_run):
    source = tmp_path / "aniso.zarr"
    write_image(source, anisotropic_volume()[:2], voxel_size=(40.0, 8.0, 8.0), units="nm")
    code, out, err = run_cli(capsys, "isotropic", source, "-o", tmp_path / "iso.zarr", "--model", iso_run,
                             "--samples", 1, "--steps", 1, "--device", "cpu")
    assert code == 0, err
    iso = zarr.open_group(str(tmp_path / "iso.zarr"), mode="r")
    assert iso["0"].shape == (6, 48, 64)
    dataset = iso.attrs["ome"]["multiscales"][0]["datasets"][0]
    assert dataset["coordinateTransformations"][0]["scale"] == pytest.approx([8.0, 8.0, 8.0])
    assert "z spacing 8 nm" in out


@pytest.mark.parametrize("case, message", [
    ("image2d", "at least 2 slices"),
    ("zfactor", "--z-factor 5"),
    ("denoise_model", "isotropic model"),
    ("missing", "does not exist"),
])
def test_isotropic_bad_input_is_one_line(tmp_path, capsys, iso_run, case, message):
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, anisotropic_volume()[0] if case == "image2d" else anisotropic_volume(),
                     photometric="minisblack")
    args = ["isotropic", source, "-o", tmp_path / "out.tif", "--model", iso_run]
    if case == "zfactor":
        args += ["--z-factor", 4]
    if case == "denoise_model":
        args[-1] = write_tiny_run(tmp_path / "denoiser")
    if case == "missing":
        args[1] = tmp_path / "nope.tif"
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out.tif").exists()


def test_isotropic_entry_point_in_a_subprocess(tmp_path, iso_run):
    source = tmp_path / "aniso.tif"
    write_image(source, anisotropic_volume()[:2, :32, :32], voxel_size=(50.0, 10.0, 10.0))
    proc = subprocess.run([sys.executable, "-m", "napari_emdiffuse.cli", "isotropic", str(source), "-o",
                           str(tmp_path / "iso.tif"), "--model", str(iso_run), "--samples", "2", "--steps", "1",
                           "--device", "cpu"], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert tifffile.imread(tmp_path / "iso.tif").shape == (6, 32, 32)
    assert (tmp_path / "iso_std.tif").exists()
