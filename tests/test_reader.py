"""The napari reader in a real viewer (run under Xvfb): a result the package wrote (a CLI zarr
store with pyramid levels, a streamed store, TIFF outputs opened from a sibling, an isotropic
volume) opens as the widgets show one, on its calibrated grid; other TIFF / OME-Zarr images open
at their true voxel size; what it cannot show is left to other readers."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from conftest import TINY_CARD, layer_look, write_tiny_run
from napari_emdiffuse import ome_zarr
from napari_emdiffuse._reader import get_reader
from napari_emdiffuse._widgets._results import KEY, add_result_layer
from napari_emdiffuse._widgets._isotropic_layers import add_isotropic_layers
from napari_emdiffuse.calibration import Calibration
from napari_emdiffuse.cli import main
from napari_emdiffuse.io import write_image
from napari_emdiffuse.sample_data import SSTEM, load_fibsem, load_sstem

PLUGIN = "napari-emdiffuse"
ROLES = ("restored", "std", "aleatoric", "mask", "uncertainty")


def cli(*argv):
    assert main([str(a) for a in argv]) == 0


def by_role(layers) -> dict:
    return {layer.metadata[KEY]["role"]: layer for layer in layers}


@pytest.fixture
def viewer(make_napari_viewer, emdiffuse_plugin):
    return make_napari_viewer()


@pytest.fixture
def nm_stack(tmp_path):
    """A real ImageJ stack at 50 x 4 x 4 nm."""
    path = tmp_path / "sstem.tif"
    tifffile.imwrite(path, load_sstem()[:2, :64, :96], imagej=True, resolution=(0.25, 0.25),
                     metadata={"axes": "ZYX", "unit": "nm", "spacing": 50.0})
    return path


def test_cli_zarr_result_opens_with_overlays_and_mask_as_the_widget_shows_them(viewer, tmp_path, nm_stack,
                                                                                  tiny_model_dir, monkeypatch):
    monkeypatch.setattr(ome_zarr, "LEVEL_TILE", 48)  # two levels for the 96-pixel-wide test result
    out = tmp_path / "den.zarr"
    cli("denoise", nm_stack, "-o", out, "--model", tiny_model_dir, "--samples", 2, "--steps", 1, "--device", "cpu")
    layers = by_role(viewer.open(out, plugin=PLUGIN))
    assert set(layers) == set(ROLES)
    assert [layer.name for layer in viewer.layers] == ["den restored", "den uncertainty (std)", "den aleatoric (std)",
                                                        "den unreliable", "den predicted error"]
    for role, layer in layers.items():
        assert layer.multiscale and [level.shape for level in layer.data] == [(2, 64, 96), (2, 32, 48)]
        assert tuple(layer.scale) == (50.0, 4.0, 4.0) and {str(u) for u in layer.units} == {"nanometer"}
    np.testing.assert_array_equal(layers["restored"].data[0][...], zarr.open_group(str(out))["0"][...])

    # The same roles placed by the widgets' code on the input layer's grid look the same.
    source = viewer.add_image(tifffile.imread(nm_stack), name="den", scale=(50, 4, 4), units="nm")
    for role, layer in layers.items():
        made = add_result_layer(viewer, source, role, layer.data[0][...], {}, {"scale": source.scale}, {})
        assert layer_look(layer) == layer_look(made), role


def test_tiff_outputs_open_together_from_any_sibling(viewer, tmp_path, nm_stack, tiny_model_dir):
    cli("denoise", nm_stack, "-o", tmp_path / "den.tif", "--model", tiny_model_dir, "--samples", 2, "--steps", 1,
        "--device", "cpu")
    layers = by_role(viewer.open(tmp_path / "den_std.tif", plugin=PLUGIN))
    assert set(layers) == set(ROLES)
    np.testing.assert_array_equal(layers["std"].data, tifffile.imread(tmp_path / "den_std.tif"))
    for layer in layers.values():
        assert not layer.multiscale and tuple(layer.scale) == (50.0, 4.0, 4.0)
        assert {str(u) for u in layer.units} == {"nanometer"}
    assert layers["mask"].visible and not layers["aleatoric"].visible  # the table's defaults


def test_streamed_superres_store_opens_on_its_shifted_grid(viewer, tmp_path, tiny_superres_dir):
    source = tmp_path / "lr.zarr"
    write_image(source, load_sstem()[:2, :32, :48], calibration=Calibration.of((50, 8, 8), "nm", (0, 100, 200)))
    cli("superres", source, "-o", tmp_path / "sr.zarr", "--model", tiny_superres_dir, "--samples", 2, "--steps", 1,
        "--device", "cpu", "--chunk", 32)
    layers = by_role(viewer.open(tmp_path / "sr_mask.zarr", plugin=PLUGIN))
    assert set(layers) == set(ROLES) and layers["mask"].data.shape == (2, 64, 96)
    for layer in layers.values():  # 4 nm pixels whose boxes start where the input's do
        assert tuple(layer.scale) == (50.0, 4.0, 4.0) and tuple(layer.translate) == (0.0, 98.0, 198.0)


def test_isotropic_result_opens_as_the_isotropic_widget_shows_it(viewer, tmp_path):
    network = dict(TINY_CARD["network"], in_channel=3, slice_embedding=True)
    iso_run = write_tiny_run(tmp_path / "iso-run", name="tiny-isotropic", task="isotropic", network=network,
                             isotropic={"z_factor": 5}, tile={"size": 64, "overlap": 16})
    volume = load_fibsem()[::5][:2, :32, :32]
    source = tmp_path / "aniso.tif"
    tifffile.imwrite(source, volume, imagej=True, resolution=(0.1, 0.1), metadata={"unit": "nm", "spacing": 50.0})
    cli("isotropic", source, "-o", tmp_path / "iso.zarr", "--model", iso_run, "--samples", 2, "--steps", 1,
        "--device", "cpu")
    opened = {layer.metadata[KEY]["role"]: layer for layer in viewer.open(tmp_path / "iso.zarr", plugin=PLUGIN)}
    # the isotropic volume and its overlays as the Isotropic widget shows them; the rest as the Restore widget does
    assert [layer.name for layer in viewer.layers] == ["iso isotropic", "iso isotropic uncertainty (std)",
                                                       "iso aleatoric (std)", "iso unreliable",
                                                       "iso isotropic predicted error"]
    assert set(opened) == {"isotropic", "isotropic_std", "aleatoric", "mask", "isotropic_uncertainty"}
    source_layer = viewer.add_image(volume, name="iso", scale=(50, 10, 10), units="nm")
    made = add_isotropic_layers(viewer, source_layer, 5, {"mean": opened["isotropic"].data[...],
                                                          "std": opened["isotropic_std"].data[...],
                                                          "uncertainty": opened["isotropic_uncertainty"].data[...]})
    assert layer_look(opened["isotropic"]) == layer_look(made["isotropic"])
    assert layer_look(opened["isotropic_std"]) == layer_look(made["std"])
    assert layer_look(opened["isotropic_uncertainty"]) == layer_look(made["uncertainty"])
    assert tuple(opened["isotropic"].scale) == (10.0, 10.0, 10.0)


def test_other_images_open_at_their_voxel_size(viewer, tmp_path):
    (sstem,) = viewer.open(SSTEM, plugin=PLUGIN)  # the bundled ImageJ stack, 50 x 4 x 4 nm
    assert sstem.name == "sstem_isbi2012_crop" and tuple(sstem.scale) == (50.0, 4.0, 4.0)
    assert {str(u) for u in sstem.units} == {"nanometer"}
    group = zarr.open_group(str(tmp_path / "em.ome.zarr"), mode="w")
    group.create_array("s0", data=load_sstem()[0, :32, :32], dimension_names=["y", "x"])
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"],
        "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [0.004, 0.004]},
                                                                  {"type": "translation", "translation": [1, 2]}]}]}]}
    (layer,) = viewer.open(tmp_path / "em.ome.zarr", plugin=PLUGIN)
    assert layer.name == "em" and tuple(layer.scale) == (0.004, 0.004) and tuple(layer.translate) == (1.0, 2.0)
    assert {str(u) for u in layer.units} == {"micrometer"}


def test_what_cannot_be_shown_is_left_to_other_readers(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array("a", shape=(4, 4), dtype="u1")
    tifffile.imwrite(tmp_path / "tczyx.tif", np.zeros((2, 2, 3, 8, 8), np.uint8), imagej=True)
    (tmp_path / "notes.txt").write_text("not an image")
    for name in ("rgb.tif", "plain.zarr", "tczyx.tif", "notes.txt", "missing.tif"):
        assert get_reader(str(tmp_path / name)) is None, name
    assert get_reader([str(tmp_path / "rgb.tif"), str(SSTEM)]) is None  # a stack of files: not ours
    assert callable(get_reader(str(SSTEM)))
