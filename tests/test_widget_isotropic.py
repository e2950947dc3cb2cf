"""The Isotropic reconstruction widget in a real napari viewer (run under Xvfb): docked from the
manifest, a volume layer in, the isotropic layer out with the right z scale and its uncertainty
overlay, progress, cancel, and a 2D layer refused with a notification."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY_CARD, write_tiny_run
from napari_emdiffuse.sample_data import load_fibsem

VOXEL = (50.0, 10.0, 10.0)


@pytest.fixture
def dock(make_napari_viewer, emdiffuse_plugin, qtbot, iso_run):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Isotropic reconstruction")
    qtbot.waitUntil(lambda: widget.env.ready, timeout=60_000)
    widget.settings.model = str(iso_run)
    yield viewer, widget
    widget.cancel()
    widget.wait()


def errors(notifications):
    return [message for severity, message in notifications if severity == "error"]


def test_reconstructs_volume_layer_with_z_scale_and_uncertainty(dock, qtbot, notifications):
    viewer, widget = dock
    volume = load_fibsem()[::5][:3, :64, :64]
    source = viewer.add_image(volume, name="aniso", scale=VOXEL, translate=(100.0, 0.0, 0.0))
    widget.image.value = source
    seen = []
    widget.run_state.events.done.connect(lambda value: seen.append(value))
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)

    assert not errors(notifications)
    out = viewer.layers["aniso isotropic"]
    assert out.data.shape == (11, 64, 64) and out.data.dtype == np.uint8
    np.testing.assert_allclose(out.scale, (10.0, 10.0, 10.0))
    np.testing.assert_allclose(out.translate, source.translate)  # acquired slice i overlays source slice i
    np.testing.assert_array_equal(out.data[::5], volume)
    std = viewer.layers["aniso isotropic uncertainty (std)"]
    assert std.blending == "additive" and np.all(std.data[::5] == 0) and float(std.data[1:5].mean()) > 0
    assert seen and seen[-1] == widget.run_state.total > 0  # progress reached the end
    assert "generated 2 gap(s)" in widget.run_state.status
    # a second run replaces the results instead of piling up layers
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert [layer.name for layer in viewer.layers].count("aniso isotropic") == 1


def test_ensemble_setting_reaches_the_reconstruction(dock, qtbot, notifications, tmp_path):
    from napari_emdiffuse.loading import load_model
    from napari_emdiffuse.api import restore as reconstruct

    viewer, widget = dock
    run = write_tiny_run(tmp_path / "posterior-run", name="tiny-isotropic", task="isotropic",
                         network=dict(TINY_CARD["network"], in_channel=3, slice_embedding=True),
                         diffusion=dict(TINY_CARD["diffusion"], estimate="posterior_mean"),
                         isotropic={"z_factor": 5}, tile={"size": 64, "overlap": 16})
    volume = load_fibsem()[::5][:2, :48, :40]
    widget.image.value = viewer.add_image(volume, name="aniso")
    widget.settings.model = str(run)
    widget.ensemble.value = 2
    assert widget.settings.ensemble == 2
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert not errors(notifications)
    expected = reconstruct(volume, load_model(run), ensemble=2, device="cpu")
    assert expected.info["ensemble"] == 2
    np.testing.assert_array_equal(viewer.layers["aniso isotropic"].data, expected.mean)


def test_cancel_keeps_finished_gaps(dock, qtbot, notifications):
    viewer, widget = dock
    source = viewer.add_image(load_fibsem()[::5][:, :64, :64], name="aniso", scale=VOXEL)
    widget.image.value = source
    widget.settings.steps = 50  # long enough to cancel mid-run
    widget.start()
    qtbot.waitUntil(lambda: widget.run_state.done > 0, timeout=60_000)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert not errors(notifications)
    assert widget.run_state.status.startswith("cancelled")


def test_zarr_volume_streams_into_a_lazy_isotropic_layer(dock, qtbot, notifications, tmp_path, iso_run):
    import zarr

    from conftest import layer_look, validated_ome_zarr
    from napari_emdiffuse._widgets._results import KEY
    from napari_emdiffuse.calibration import Calibration
    from napari_emdiffuse.io import read_calibration
    from napari_emdiffuse.streaming import open_result, stream_restore

    viewer, widget = dock
    volume = load_fibsem()[::5][:3, :64, :64]
    store = zarr.open_array(tmp_path / "aniso.zarr", mode="w", shape=volume.shape, chunks=(1, 64, 64),
                            dtype=volume.dtype)
    store[:] = volume
    source = viewer.add_image(store, name="aniso", scale=VOXEL, units="nm")
    widget.image.value = source
    assert not widget.store.native.isHidden()  # a result store is offered for a lazy volume
    widget.settings.store = str(tmp_path / "iso.zarr")
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)

    assert not errors(notifications)
    out = viewer.layers["aniso isotropic"]
    assert isinstance(out.data, zarr.Array) and out.data.shape == (11, 64, 64)  # read from the store
    np.testing.assert_allclose(out.scale, (10.0, 10.0, 10.0))
    np.testing.assert_array_equal(out.data[::5], volume)
    assert float(np.asarray(viewer.layers["aniso isotropic uncertainty (std)"].data[1:5]).mean()) > 0
    assert widget.run_state.status.startswith("reconstructed")
    core = stream_restore(store, tmp_path / "core.zarr", str(iso_run), task="isotropic", device="cpu")
    np.testing.assert_array_equal(out.data[...], open_result(core.output)[...])

    # the store is OME-Zarr 0.5 at the layer's units, z scaled; the reader shows it as the widget did
    validated_ome_zarr(tmp_path / "iso.zarr")
    assert read_calibration(tmp_path / "iso.zarr") == Calibration.of((10, 10, 10), "nm")
    opened = {layer.metadata[KEY]["role"]: layer for layer in viewer.open(tmp_path / "iso.zarr",
                                                                            plugin="napari-emdiffuse")}
    assert layer_look(opened["isotropic"]) == layer_look(out)
    assert layer_look(opened["isotropic_std"]) == layer_look(viewer.layers["aniso isotropic uncertainty (std)"])

    widget.start()  # the same settings again: every chunk is already there
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert widget.run_state.status.endswith("from an earlier run)")
    assert [layer.name for layer in viewer.layers].count("aniso isotropic") == 1


def test_2d_layer_is_refused_with_a_notification(dock, notifications):
    viewer, widget = dock
    widget.image.value = viewer.add_image(load_fibsem()[0], name="plane")
    widget.start()
    assert not widget.running
    assert any("not a stack" in message for message in errors(notifications))
