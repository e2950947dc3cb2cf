"""Data that travels: every store the package writes is OME-Zarr 0.5 that ``ome-zarr-models``
validates (CLI ``-o x.zarr``, streamed ``--chunk`` runs with their pyramid levels, super-resolution
and isotropic outputs), with the input's axes, units, scale and translation; TIFF units come back
in kind (nm stays nm, no unit stays none, isotropic z scaled); and a store the tasks cannot use is
refused in one line with nothing the user gave modified. Real tifffile, zarr and tiny models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from conftest import run_cli, validated_ome_zarr
from napari_emdiffuse import ome_zarr
from napari_emdiffuse.loading import load_model
from napari_emdiffuse.api import restore
from napari_emdiffuse.calibration import Calibration
from napari_emdiffuse.io import read_about, read_calibration, read_image, write_image
from napari_emdiffuse.results import MASK_RGBA, output_paths
from napari_emdiffuse.sample_data import SSTEM, load_fibsem, load_sstem

FIELDS = ("mean", "std", "aleatoric", "mask", "uncertainty")  # what the tiny aleatoric denoiser writes with 2 samples


def imagej_tiff(path, array, voxel=(50.0, 4.0, 4.0), unit="nm"):
    """A TIFF as ImageJ writes one (not through the package): resolution tags in pixels per
    unit, ``unit`` and ``spacing`` in the description."""
    metadata = {"axes": "ZYX"[-array.ndim:], **({"unit": unit} if unit else {})}
    if array.ndim == 3:
        metadata["spacing"] = voxel[0]
    tifffile.imwrite(path, array, imagej=True, resolution=(1 / voxel[-1], 1 / voxel[-2]), metadata=metadata)
    return path


def transforms(path, level: int = 0) -> tuple[list, list]:
    dataset = dict(zarr.open_group(str(path), mode="r").attrs)["ome"]["multiscales"][0]["datasets"][level]
    scale, translation = dataset["coordinateTransformations"]
    return scale["scale"], translation["translation"]


def check_result_stores(output, fields, scale, unit, translation=None, task="denoise"):
    """OUTPUT and its siblings validate, read the same way (image at ``0``), say what they
    hold, and carry the expected calibration; the mask is a labels image pointing at OUTPUT."""
    for field, path in output_paths(output, fields).items():
        model = validated_ome_zarr(path, labels=field == "mask")
        axes = model.attributes.ome.multiscales[0].axes
        assert [a.name for a in axes] == list("zyx"[-len(scale):])
        assert [a.unit for a in axes] == [unit] * len(scale) and {a.type for a in axes} == {"space"}
        group = zarr.open_group(str(path), mode="r")
        assert group["0"].metadata.dimension_names == tuple("zyx"[-len(scale):])
        got_scale, got_translation = transforms(path)
        assert got_scale == pytest.approx(list(scale))
        assert got_translation == pytest.approx(list(translation or [0.0] * len(scale)))
        assert read_about(path) == {"field": field, "task": task}
    mask = output_paths(output, ("mask",))["mask"]
    if "mask" in fields:
        label = dict(zarr.open_group(str(mask), mode="r").attrs)["ome"]["image-label"]
        assert label["colors"] == [{"label-value": 1, "rgba": [round(255 * c) for c in MASK_RGBA]}]
        assert label["source"] == {"image": f"../{Path(output).name}"}


def same_calibration(got, expected) -> bool:
    if got is None or expected is None:
        return got is expected
    return (got.units == expected.units and got.voxel_size == pytest.approx(expected.voxel_size)
            and got.translation == pytest.approx(expected.translation))


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


# ---- 1. OME-Zarr that validates -------------------------------------------------------------------
def test_cli_zarr_output_is_the_streamed_layout_with_the_inputs_units(tmp_path, capsys, tiny_model_dir):
    stack = load_sstem()[:2, :64, :96]
    source = imagej_tiff(tmp_path / "sstem.tif", stack)
    out = tmp_path / "den.zarr"
    code, _, err = run_cli(capsys, "denoise", source, "-o", out, "--model", tiny_model_dir, "--samples", 2,
                           "--steps", 1, "--device", "cpu")
    assert code == 0, err
    check_result_stores(out, FIELDS, (50.0, 4.0, 4.0), "nanometer")
    expected = restore(stack, load_model(str(tiny_model_dir)), samples=2, steps=1, device="cpu")
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][...], expected.mean)
    assert read_calibration(out) == Calibration.of((50, 4, 4), "nm")


def test_streamed_store_validates_gets_pyramid_levels_and_resumes_keeping_them(tmp_path, capsys, tiny_model_dir,
                                                                              monkeypatch):
    monkeypatch.setattr(ome_zarr, "LEVEL_TILE", 32)  # levels for a small test volume: 96 -> 48 -> 24
    source = tmp_path / "in.zarr"
    write_image(source, load_sstem()[:2, :64, :96], calibration=Calibration.of((50, 4, 4), "nm", (100, 8, 12)))
    out = tmp_path / "den.zarr"
    args = ["denoise", source, "-o", out, "--model", tiny_model_dir, "--samples", 2, "--steps", 1, "--device",
            "cpu", "--chunk", 32]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    check_result_stores(out, FIELDS, (50.0, 4.0, 4.0), "nanometer", (100.0, 8.0, 12.0))
    group = zarr.open_group(str(out), mode="r")
    assert "emdiffuse_done" in group and dict(group.attrs)["emdiffuse_stream"]["task"] == "denoise"
    for field, path in output_paths(out, FIELDS).items():
        store = zarr.open_group(str(path), mode="r")
        shapes = [store[str(level)].shape for level in range(3)]
        assert shapes == [(2, 64, 96), (2, 32, 48), (2, 16, 24)] and "3" not in store
        full, half = store["0"][...].astype(np.float64), store["1"][...]
        blocks = full.reshape(2, 32, 2, 48, 2)
        if field == "mask":  # a block is unreliable if any of its pixels is
            np.testing.assert_array_equal(half, blocks.max(axis=(2, 4)))
        elif field == "mean":  # uint8: the block mean, rounded
            np.testing.assert_array_equal(half, np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8))
        else:
            np.testing.assert_allclose(half, blocks.mean(axis=(2, 4)), rtol=1e-6)
        scale, translation = transforms(path, 1)
        assert scale == [50.0, 8.0, 8.0] and translation == [100.0, 10.0, 14.0]  # the 2 x 2 block's centre
    code, out_text, err = run_cli(capsys, *args)  # finished: nothing to do, levels kept
    assert code == 0 and "12 already done" in out_text, err
    check_result_stores(out, FIELDS, (50.0, 4.0, 4.0), "nanometer", (100.0, 8.0, 12.0))


def test_pyramid_levels_are_built_chunk_by_chunk(tmp_path):
    """Building the levels of a 34 MB volume holds a few chunks at a time, never the volume."""
    import tracemalloc

    group = ome_zarr.create_image(tmp_path / "big.zarr", (2, 2048, 2048), "float32", (1, 256, 256),
                                  Calibration.of((50, 4, 4), "nm"), "big")
    rng = np.random.default_rng(0)
    for z in range(2):
        for y in range(0, 2048, 256):
            group["0"][z, y:y + 256] = rng.random((256, 2048), dtype=np.float32)
    tracemalloc.start()
    try:
        assert ome_zarr.add_levels(tmp_path / "big.zarr") == 3  # 2048 -> 1024 -> 512
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2048 * 2048 * 4 / 4, f"{peak / 1e6:.1f} MB"
    validated_ome_zarr(tmp_path / "big.zarr")
    np.testing.assert_allclose(zarr.open_group(str(tmp_path / "big.zarr"))["2"][1, 5, 7],
                               group["0"][1, 20:24, 28:32].mean(), rtol=1e-5)


@pytest.mark.parametrize("streamed", [False, True])
def test_superres_and_isotropic_stores_validate_with_scaled_voxels(tmp_path, capsys, sr_run, iso_run, streamed):
    chunking = ["--chunk", "2,32,32"] if streamed else []
    lr = imagej_tiff(tmp_path / "lr.tif", load_sstem()[0, :32, :48], voxel=(4.0, 4.0))
    code, _, err = run_cli(capsys, "superres", lr, "-o", tmp_path / "sr.zarr", "--model", sr_run, "--samples", 2,
                           "--steps", 1, "--device", "cpu", *chunking)
    assert code == 0, err
    # 2 nm pixels; the first one's centre half an output pixel inside the input pixel's box
    check_result_stores(tmp_path / "sr.zarr", FIELDS, (2.0, 2.0), "nanometer",
                        (-1.0, -1.0), task="superres")
    assert read_image(tmp_path / "sr.zarr").shape == (64, 96)

    aniso = imagej_tiff(tmp_path / "aniso.tif", load_fibsem()[::5][:3, :32, :32], voxel=(50.0, 10.0, 10.0))
    code, out, err = run_cli(capsys, "isotropic", aniso, "-o", tmp_path / "iso.zarr", "--model", iso_run,
                             "--samples", 2, "--steps", 1, "--device", "cpu", *chunking)
    assert code == 0, err
    check_result_stores(tmp_path / "iso.zarr", ("mean", "std"), (10.0, 10.0, 10.0), "nanometer", task="isotropic")
    assert read_image(tmp_path / "iso.zarr").shape == (11, 32, 32)


# ---- 2. True units end to end -------------------------------------------------------------------------
def test_imagej_nm_tiff_comes_back_in_nm_with_the_restored_values(tmp_path, capsys, tiny_model_dir):
    """The bundled ssTEM crop is a real ImageJ stack at 50 x 4 x 4 nm."""
    with tifffile.TiffFile(SSTEM) as tif:
        assert tif.imagej_metadata["unit"] == "nm"
    source = tmp_path / "sstem.tif"
    tifffile.imwrite(source, tifffile.imread(SSTEM)[:2, :64, :96], imagej=True, resolution=(0.25, 0.25),
                     metadata={"axes": "ZYX", "unit": "nm", "spacing": 50.0})
    code, _, err = run_cli(capsys, "denoise", source, "-o", tmp_path / "out.tif", "--model", tiny_model_dir,
                           "--samples", 2, "--steps", 1, "--device", "cpu")
    assert code == 0, err
    for field, path in output_paths(tmp_path / "out.tif", FIELDS).items():
        with tifffile.TiffFile(path) as tif:
            assert tif.imagej_metadata["unit"] == "nm" and tif.imagej_metadata["spacing"] == 50.0
            assert tif.pages[0].resolution == (0.25, 0.25)
        assert read_calibration(path) == Calibration.of((50, 4, 4), "nm") and read_about(path)["field"] == field
    expected = restore(tifffile.imread(source), load_model(str(tiny_model_dir)), samples=2, steps=1, device="cpu")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), expected.mean)


@pytest.mark.parametrize("kind", ["imagej_um", "ome_tiff_um", "resolution_cm", "unitless"])
def test_tiff_units_round_trip_through_the_cli_in_kind(tmp_path, capsys, tiny_model_dir, kind):
    image = load_sstem()[0, :48, :64]
    source = tmp_path / ("in.ome.tif" if kind == "ome_tiff_um" else "in.tif")
    if kind == "imagej_um":  # ImageJ writes micrometres as "micron"
        tifffile.imwrite(source, image, imagej=True, resolution=(250, 250), metadata={"unit": "micron"})
    elif kind == "ome_tiff_um":
        tifffile.imwrite(source, image, metadata={"PhysicalSizeX": 0.004, "PhysicalSizeXUnit": "µm",
                                                  "PhysicalSizeY": 0.004, "PhysicalSizeYUnit": "µm"})
    elif kind == "resolution_cm":  # resolution tags only: 2.5e6 pixels per centimetre
        tifffile.imwrite(source, image, resolution=(2.5e6, 2.5e6), resolutionunit="CENTIMETER")
    else:
        tifffile.imwrite(source, image)
    expected = {"imagej_um": Calibration.of((0.004, 0.004), "um"), "ome_tiff_um": Calibration.of((0.004, 0.004), "um"),
                "resolution_cm": Calibration.of((4e-7, 4e-7), "cm"), "unitless": None}[kind]
    assert same_calibration(read_calibration(source), expected)
    out = tmp_path / ("out.ome.tif" if kind == "ome_tiff_um" else "out.tif")
    code, _, err = run_cli(capsys, "denoise", source, "-o", out, "--model", tiny_model_dir, "--samples", 2,
                           "--steps", 1, "--device", "cpu")
    assert code == 0, err
    assert same_calibration(read_calibration(out), expected)
    assert same_calibration(read_calibration(tmp_path / out.name.replace("out", "out_std")), expected)
    with tifffile.TiffFile(out) as tif:
        if kind == "ome_tiff_um":
            pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
            assert pixels["PhysicalSizeXUnit"] == "µm" and pixels["PhysicalSizeX"] == 0.004
        elif kind == "unitless":
            assert "unit" not in tif.imagej_metadata and tif.pages[0].resolution == (1.0, 1.0)
        else:
            assert tif.imagej_metadata["unit"] == {"imagej_um": "um", "resolution_cm": "cm"}[kind]
    if kind == "resolution_cm":
        assert tifffile.TiffFile(out).pages[0].resolutionunit == tifffile.RESUNIT.CENTIMETER


@pytest.mark.parametrize("unit", ["nm", None])
def test_isotropic_tiff_output_scales_z_and_keeps_the_unit(tmp_path, capsys, iso_run, unit):
    source = imagej_tiff(tmp_path / "aniso.tif", load_fibsem()[::5][:2, :32, :32], voxel=(50.0, 10.0, 10.0),
                         unit=unit)
    code, out, err = run_cli(capsys, "isotropic", source, "-o", tmp_path / "iso.tif", "--model", iso_run,
                             "--samples", 2, "--steps", 1, "--device", "cpu")
    assert code == 0, err
    calibration = read_calibration(tmp_path / "iso.tif")
    assert calibration.voxel_size == pytest.approx((10.0, 10.0, 10.0))
    assert calibration.units == (("nanometer",) * 3 if unit else (None,) * 3)
    assert f"z spacing {'10 nm' if unit else '10'}" in out
    with tifffile.TiffFile(tmp_path / "iso.tif") as tif:
        assert tif.imagej_metadata["spacing"] == pytest.approx(10.0) and tif.imagej_metadata.get("unit") == unit


def test_isotropic_without_any_voxel_size_states_the_relative_z_spacing(tmp_path, capsys, iso_run):
    source = tmp_path / "aniso.tif"
    tifffile.imwrite(source, load_fibsem()[::5][:2, :32, :32])
    code, out, err = run_cli(capsys, "isotropic", source, "-o", tmp_path / "iso.zarr", "--model", iso_run,
                             "--samples", 1, "--steps", 1, "--device", "cpu")
    assert code == 0, err
    assert "no voxel size in the input; z spacing 1/5" in out
    validated_ome_zarr(tmp_path / "iso.zarr")
    assert transforms(tmp_path / "iso.zarr")[0] == pytest.approx([0.2, 1.0, 1.0])
    assert read_calibration(tmp_path / "iso.zarr").units == (None, None, None)


# ---- 5. Bad input ----------------------------------------------------------------------------------------
def _bad_store(tmp_path, case) -> Path:
    path = tmp_path / "in.zarr"
    volume = load_fibsem()[:4, :32, :32]
    if case == "group_without_arrays":
        zarr.open_group(str(path), mode="w").attrs["note"] = "not an image"
    elif case == "group_with_an_array":
        zarr.open_group(str(path), mode="w").create_array("raw", data=volume[:2])
    else:
        axes = {"time_series": [("t", "time"), ("z", "space"), ("y", "space"), ("x", "space")],
                "channels": [("c", "channel"), ("y", "space"), ("x", "space")]}[case]
        data = volume[None] if case == "time_series" else volume[:2]
        group = zarr.open_group(str(path), mode="w")
        group.create_array("0", data=data, dimension_names=[a for a, _ in axes])
        group.attrs["ome"] = {"version": "0.5", "multiscales": [{
            "axes": [{"name": a, "type": t} for a, t in axes],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * len(axes)}]}]}]}
    return path


@pytest.mark.parametrize("case, message", [
    ("group_without_arrays", "in.zarr is a zarr group but not an OME-Zarr image (no multiscales metadata) — give an "
                             "OME-Zarr image or a zarr array"),
    ("group_with_an_array", "not an OME-Zarr image (no multiscales metadata) — give the array inside it (in.zarr/raw)"),
    ("time_series", "in.zarr has axes t (time), z (space), y (space), x (space): only 2 or 3 space axes"),
    ("channels", "in.zarr has axes c (channel), y (space), x (space): only 2 or 3 space axes"),
])
@pytest.mark.parametrize("streamed", [False, True])
def test_a_store_the_tasks_cannot_use_is_refused_in_one_line_untouched(tmp_path, capsys, tiny_model_dir, case,
                                                                       message, streamed):
    source = _bad_store(tmp_path, case)
    before = snapshot(source)
    chunking = ["--chunk", 32] if streamed else []
    code, _, err = run_cli(capsys, "denoise", source, "-o", tmp_path / "out.zarr", "--model", tiny_model_dir,
                           *chunking)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert err.startswith("emdiffuse: error: ")
    assert snapshot(source) == before and sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]


def test_the_array_inside_a_plain_group_is_restored_when_named(tmp_path, capsys, tiny_model_dir):
    source = _bad_store(tmp_path, "group_with_an_array")
    code, _, err = run_cli(capsys, "denoise", source / "raw", "-o", tmp_path / "out.zarr", "--model", tiny_model_dir,
                           "--samples", 1, "--steps", 1, "--device", "cpu")
    assert code == 0, err
    assert read_image(tmp_path / "out.zarr").shape == (2, 32, 32)
    code, _, err = run_cli(capsys, "denoise", source / "raw", "-o", source / "out.zarr", "--model", tiny_model_dir)
    assert code == 2 and "be written inside in.zarr, which holds the input" in err and err.count("\n") == 1, err
