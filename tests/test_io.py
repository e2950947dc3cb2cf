"""TIFF and zarr reading/writing with voxel sizes, atomic writes, and the input checks."""
import os
import stat

import numpy as np
import pytest
import tifffile
import zarr

from napari_emdiffuse.calibration import Calibration
from napari_emdiffuse.io import (ImageError, check_image, image_format, read_calibration, read_image,
                                 read_voxel_size, write_image)
from napari_emdiffuse.results import sibling_path
from napari_emdiffuse.sample_data import FIBSEM, FIBSEM_VOXEL_NM, SSTEM, SSTEM_VOXEL_NM, load_pair


@pytest.fixture(scope="module")
def em_crop():
    noisy, _ = load_pair()
    return np.asarray(noisy[:48, :64])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64, np.int16])
def test_tiff_roundtrip_keeps_dtype_and_voxel_size(tmp_path, em_crop, dtype):
    stack = np.stack([em_crop, em_crop[::-1]]).astype(dtype)
    path = write_image(tmp_path / "stack.tif", stack, voxel_size=(0.05, 0.004, 0.004))
    back = read_image(path)
    assert back.dtype == dtype and np.array_equal(back, stack)
    # ImageJ metadata (uint8, uint16, float32) or OME-TIFF (the rest) carry the z spacing too
    assert read_voxel_size(path) == pytest.approx((0.05, 0.004, 0.004))


def test_tiff_without_voxel_size(tmp_path, em_crop):
    path = write_image(tmp_path / "plain.tif", em_crop)
    assert read_voxel_size(path) is None
    assert np.array_equal(read_image(path), em_crop)


def test_voxel_size_copied_from_like(tmp_path, em_crop):
    src = write_image(tmp_path / "in.tif", em_crop, voxel_size=(0.008, 0.008))
    out = write_image(tmp_path / "out.zarr", em_crop, like=src)
    assert read_voxel_size(out) == pytest.approx((0.008, 0.008))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_is_read_lazily_and_written_as_ome_zarr(tmp_path, em_crop, zarr_format):
    """A plain zarr array (v2 or v3) is read lazily with its voxel_size attribute; what the
    package writes is always an OME-Zarr 0.5 image (zarr v3) with that voxel size as scale."""
    stack = np.stack([em_crop] * 3)
    z = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=stack.shape, dtype=stack.dtype,
                          chunks=(1, 48, 64), zarr_format=zarr_format)
    z[:] = stack
    z.attrs["voxel_size"] = [0.03, 0.005, 0.005]
    lazy = read_image(tmp_path / "in.zarr")
    assert isinstance(lazy, zarr.Array) and not isinstance(lazy, np.ndarray)
    assert np.array_equal(lazy[1], stack[1])
    out = write_image(tmp_path / "out.zarr", stack.astype(np.float32), like=tmp_path / "in.zarr")
    written = zarr.open_group(str(out), mode="r")
    assert written.metadata.zarr_format == 3 and written.attrs["ome"]["version"] == "0.5"
    assert written["0"].metadata.dimension_names == ("z", "y", "x")
    assert read_voxel_size(out) == pytest.approx((0.03, 0.005, 0.005))
    assert np.array_equal(read_image(out)[:], stack.astype(np.float32))


def test_ome_zarr_group_reads_its_first_level(tmp_path, em_crop):
    """The finest level is the one the metadata lists first, whatever its name."""
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    group.create_array("s0", shape=em_crop.shape, dtype=em_crop.dtype)[:] = em_crop
    group.create_array("s1", shape=(24, 32), dtype=em_crop.dtype)[:] = em_crop[::2, ::2]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "y", "type": "space", "unit": "nanometer"}, {"name": "x", "type": "space", "unit": "nanometer"}],
        "datasets": [{"path": f"s{i}", "coordinateTransformations": [{"type": "scale", "scale": [4.0 * 2 ** i] * 2}]}
                     for i in range(2)]}]}
    assert np.array_equal(read_image(tmp_path / "img.ome.zarr")[:], em_crop)
    assert read_voxel_size(tmp_path / "img.ome.zarr") == (4.0, 4.0)


def test_writes_replace_atomically_with_usual_permissions(tmp_path, em_crop):
    umask = os.umask(0)
    os.umask(umask)
    for name, mode in (("out.tif", 0o666), ("out.zarr", 0o777)):
        write_image(tmp_path / name, em_crop)
        write_image(tmp_path / name, em_crop[::-1])  # overwrite an existing file/store
        assert np.array_equal(np.asarray(read_image(tmp_path / name)[:]), em_crop[::-1])
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode & ~umask  # not the temp file's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "out.zarr"]  # no temporaries left


def test_formats_and_sibling_paths(tmp_path):
    assert image_format("a.TIF") == "tiff" and image_format("b.zarr") == "zarr"
    with pytest.raises(ImageError, match=r"unknown image format '.png' — use TIFF"):
        image_format("image.png")
    assert sibling_path("out.tif", "std").name == "out_std.tif"
    assert sibling_path("d/out.ome.tiff", "std").name == "out_std.ome.tiff"
    assert sibling_path("out.zarr", "mask").name == "out_mask.zarr"


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ImageError, match="does not exist — check the path"):
        read_image(tmp_path / "nothing.tif")
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ImageError, match=r"cannot read junk.tif .* check that it is a valid TIFF file") as err:
        read_image(tmp_path / "junk.tif")
    assert "\n" not in str(err.value)


def test_rgb_tiff_is_rejected_on_read(tmp_path, em_crop):
    tifffile.imwrite(tmp_path / "colour.tif", np.stack([em_crop] * 3, axis=-1), photometric="rgb")
    with pytest.raises(ImageError, match=r"colour.tif is RGB \(48, 64, 3\) — convert it to grayscale first"):
        read_image(tmp_path / "colour.tif")


@pytest.mark.parametrize("channels,kind", [(3, "RGB"), (4, "RGBA")])
def test_check_rejects_colour_arrays(em_crop, channels, kind):
    with pytest.raises(ImageError, match=rf"input.tif is {kind} \(H, W, {channels}\).*convert it to grayscale"):
        check_image(np.stack([em_crop] * channels, axis=-1), "input.tif")


def test_check_rejects_more_than_three_dimensions(em_crop):
    with pytest.raises(ImageError, match=r"has 4 dimensions .* split channels or time points"):
        check_image(np.stack([np.stack([em_crop] * 2)] * 2), "input.tif")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_rejects_non_finite(em_crop, bad):
    image = em_crop.astype(np.float32)
    image[3, 4] = bad
    with pytest.raises(ImageError, match="contains NaN or infinite values — replace them"):
        check_image(image, "input.tif")


def test_check_rejects_non_finite_in_a_lazy_stack(tmp_path, em_crop):
    stack = np.stack([em_crop] * 3).astype(np.float32)
    stack[2, 0, 0] = np.nan  # only in the last slice
    z = zarr.create_array(store=str(tmp_path / "s.zarr"), shape=stack.shape, dtype=stack.dtype, chunks=(1, 48, 64))
    z[:] = stack
    with pytest.raises(ImageError, match="contains NaN"):
        check_image(read_image(tmp_path / "s.zarr"), "s.zarr")


def test_check_rejects_constant_and_accepts_em(em_crop):
    with pytest.raises(ImageError, match=r"is constant \(every pixel is 7\): there is nothing to restore"):
        check_image(np.full((32, 32), 7, np.uint8), "flat.tif")
    check_image(em_crop, "em.tif")
    check_image(np.stack([em_crop] * 3), "stack.tif")  # a 3-slice stack is not RGB


@pytest.mark.parametrize("name, dtype", [("a.tif", np.uint8), ("a.tif", np.float64), ("a.ome.tif", np.uint16),
                                         ("a.zarr", np.int16)])
@pytest.mark.parametrize("calibration", [
    Calibration.of((50, 4, 4), "nm", (100, 8, -4)),  # ImageJ: unit nm and its origin; OME: sizes and positions
    Calibration.of((0.05, 0.004, 0.004), "um"),
    Calibration.of((2, 1, 1)),  # relative voxel sizes without a unit stay without one
    Calibration.of((1, 0.5, 0.5), [None, "nm", "nm"]),  # a z spacing without a unit beside nm pixels
])
def test_calibration_round_trips_in_every_format(tmp_path, em_crop, name, dtype, calibration):
    stack = np.stack([em_crop, em_crop[::-1]]).astype(dtype)
    path = write_image(tmp_path / name, stack, calibration=calibration)
    back = read_calibration(path)
    assert back.units == calibration.units
    assert back.voxel_size == pytest.approx(calibration.voxel_size)
    assert back.translation == pytest.approx(calibration.translation)
    assert np.array_equal(np.asarray(read_image(path)[...]), stack)


@pytest.mark.parametrize("spelling", ["micron", "um", "\\u00B5m", "micrometer"])  # ImageJ descriptions are ASCII
def test_imagej_spellings_of_micrometres(tmp_path, em_crop, spelling):
    tifffile.imwrite(tmp_path / "ij.tif", em_crop, imagej=True, resolution=(250, 250), metadata={"unit": spelling})
    assert read_calibration(tmp_path / "ij.tif") == Calibration.of((0.004, 0.004), "micrometer")


def test_imagej_per_axis_units_and_the_bundled_samples(tmp_path, em_crop):
    stack = np.stack([em_crop] * 2)
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, resolution=(0.25, 0.25),
                     metadata={"unit": "nm", "zunit": "um", "spacing": 0.05, "axes": "ZYX"})
    assert read_calibration(tmp_path / "ij.tif").units == ("micrometer", "nanometer", "nanometer")
    assert read_calibration(SSTEM) == Calibration.of(SSTEM_VOXEL_NM, "nm")
    assert read_calibration(FIBSEM) == Calibration.of(FIBSEM_VOXEL_NM, "nm")


def test_a_path_inside_a_zarr_store_reads_that_array(tmp_path, em_crop):
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    group.create_array("raw", data=em_crop)
    assert image_format(tmp_path / "s.zarr" / "raw") == "zarr"
    assert np.array_equal(read_image(tmp_path / "s.zarr" / "raw")[...], em_crop)
    with pytest.raises(ImageError, match=r"s.zarr is a zarr group but not an OME-Zarr image .* \(s.zarr/raw\)"):
        read_image(tmp_path / "s.zarr")
