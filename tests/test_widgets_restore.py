"""The Restore widget in a real napari viewer (run under Xvfb): docking, end-to-end restores on
the bundled sample data with a tiny model, cancel, responsiveness, uncertainty inspection, and
bad choices that end in a notification instead of a traceback."""
from __future__ import annotations

import tempfile
import threading
import time

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_emdiffuse._widgets._results import placement
from napari_emdiffuse.sample_data import SSTEM_VOXEL_NM, load_fibsem, load_pair

ROLES = ("restored", "std", "aleatoric", "mask", "uncertainty")


@pytest.fixture
def dock(make_napari_viewer, emdiffuse_plugin, qtbot, tmp_path, monkeypatch):
    """A viewer with the Restore widget docked through the plugin manifest, ready to run.
    Scratch stores of streamed results go to this test's folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Restore")
    qtbot.waitUntil(lambda: widget.env.ready, timeout=60_000)  # devices/presets, probed off-thread
    yield viewer, widget
    widget.cancel()
    widget.wait()


def run(widget, qtbot, timeout=120):
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout * 1000)


def results_of(viewer, source):
    from napari_emdiffuse._widgets._results import find_results, layer_uid

    return find_results(viewer.layers, layer_uid(source))


def errors(notifications):
    return [message for severity, message in notifications if severity == "error"]


def test_restore_current_slice_of_sample_stack(dock, qtbot, tiny_model_dir, notifications):
    viewer, widget = dock
    (source,) = viewer.open_sample("napari-emdiffuse", "sstem")
    assert tuple(source.scale) == SSTEM_VOXEL_NM
    widget.settings.model = str(tiny_model_dir)
    assert widget.model.choice.value == "training run folder…" and not widget.model.path.native.isHidden()
    widget.settings.scope = "current slice"
    viewer.dims.set_current_step(0, 7)
    run(widget, qtbot)

    assert not errors(notifications)
    found = results_of(viewer, source)
    assert set(found) == set(ROLES)  # the tiny model is aleatoric and draws 2 samples
    for layer in found.values():
        assert layer.data.shape == (1, 256, 256)
        np.testing.assert_allclose(layer.scale, SSTEM_VOXEL_NM)
        np.testing.assert_allclose(layer.translate, (7 * 50.0, 0, 0))  # sits on slice 7
    assert found["restored"].data.dtype == np.uint8 and found["restored"].data.std() > 0
    assert found["std"].data.min() >= 0 and found["std"].data.max() > 0
    colors = found["std"].colormap.colors  # transparent at low uncertainty: the image shows through
    assert colors[0][3] == 0 and colors[-1][3] == 1 and found["std"].opacity < 1
    assert found["mask"].__class__.__name__ == "Labels"
    assert widget.run_state.done == widget.run_state.total > 0  # tiles x sampler steps, all done
    assert widget.run.progress.value == widget.run.progress.max == widget.run_state.total
    assert "unreliable" in widget.uncertainty.readout.value


def test_whole_stack_from_dask_then_rerun_replaces(dock, qtbot, tiny_model_dir, notifications):
    viewer, widget = dock
    stack = da.from_array(load_fibsem()[:3, :96, :96], chunks=(1, 96, 96))
    source = viewer.add_image(stack, name="fib", scale=(10, 10, 10), translate=(100, 5, 5))
    widget.image.value = source
    widget.settings.model = str(tiny_model_dir)
    widget.settings.scope = "whole stack"
    run(widget, qtbot)
    first = results_of(viewer, source)
    assert first["restored"].data.shape == (3, 96, 96)
    np.testing.assert_allclose(first["restored"].translate, (100, 5, 5))
    assert all(first["restored"].data[z].std() > 0 for z in range(3))
    count = len(viewer.layers)

    widget.settings.samples = 1  # no sample spread now: only the aleatoric std drives the mask
    run(widget, qtbot)
    again = results_of(viewer, source)
    assert len(viewer.layers) == count - 1 and "std" not in again  # replaced, not piled up
    assert again["restored"] is first["restored"] or again["restored"] == first["restored"]
    assert set(again) == {"restored", "aleatoric", "mask", "uncertainty"}
    assert not errors(notifications)


def test_zarr_backed_2d_image(dock, qtbot, tiny_model_dir, tmp_path):
    viewer, widget = dock
    noisy = load_pair()[0][:128, :128]
    store = zarr.open_array(tmp_path / "noisy.zarr", mode="w", shape=noisy.shape, chunks=(64, 64), dtype=noisy.dtype)
    store[:] = noisy
    source = viewer.add_image(store, name="zarr noisy", scale=(2.0, 2.0))
    widget.image.value = source
    widget.settings.model = str(tiny_model_dir)
    run(widget, qtbot)
    restored = results_of(viewer, source)["restored"]
    assert restored.data.shape == (128, 128) and tuple(restored.scale) == (2.0, 2.0)


def test_estimate_and_ensemble_choices_reach_the_core(dock, qtbot, tiny_model_dir, notifications):
    from napari_emdiffuse import load_model
    from napari_emdiffuse.api import restore

    viewer, widget = dock
    image = load_pair()[0][:96, :96]
    source = viewer.add_image(image, name="sem")
    widget.image.value = source
    widget.settings.model = str(tiny_model_dir)
    widget.estimate.value = "posterior_mean"
    widget.ensemble.value = 2
    run(widget, qtbot)
    assert not errors(notifications)
    expected = restore(image, load_model(str(tiny_model_dir)), device="cpu", seed=0, estimate="posterior_mean",
                       ensemble=2)
    np.testing.assert_array_equal(results_of(viewer, source)["restored"].data, expected.mean)
    widget.estimate.value = "sample_mean"
    run(widget, qtbot)
    assert not np.array_equal(results_of(viewer, source)["restored"].data, expected.mean)


def test_adding_a_layer_keeps_the_chosen_preset_and_device(dock):
    """napari re-reads every dock widget's choices when the layer list changes."""
    viewer, widget = dock
    widget.settings.model = "demo-denoise"
    widget.settings.device = "cpu"
    viewer.add_image(np.zeros((32, 32), np.uint8), name="another")
    assert widget.settings.model == "demo-denoise" and widget.model.choice.value == "demo-denoise"
    assert widget.model.path.native.isHidden() and widget.device.value == "cpu"


def zarr_layer(viewer, tmp_path, depth=3):
    volume = load_fibsem()[:depth, :96, :96]
    store = zarr.open_array(tmp_path / "fib.zarr", mode="w", shape=volume.shape, chunks=(1, 96, 96),
                            dtype=volume.dtype)
    store[:] = volume
    return store, viewer.add_image(store, name="fib zarr", scale=(10, 10, 10))


def test_zarr_stack_streams_into_lazy_layers_that_fill_chunk_by_chunk(dock, qtbot, tiny_model_dir, tmp_path,
                                                                     notifications, monkeypatch):
    from napari_emdiffuse.streaming import open_result, stream_restore
    from napari_emdiffuse.streaming import run as streaming

    viewer, widget = dock
    store, source = zarr_layer(viewer, tmp_path)
    widget.image.value = source
    assert not widget.store.native.isHidden()  # a result store is offered for a lazy layer
    widget.settings.model = str(tiny_model_dir)
    widget.settings.scope = "whole stack"
    widget.settings.store = str(tmp_path / "restored.zarr")
    viewer.dims.set_current_step(0, 2)  # on screen: the last chunk to be written
    gate = threading.Semaphore(0)  # the test lets the worker write one chunk at a time
    restore_chunk = streaming.restore_chunk
    monkeypatch.setattr(streaming, "restore_chunk", lambda *a, **k: gate.acquire(timeout=60) and restore_chunk(*a, **k))
    widget.start()
    qtbot.waitUntil(lambda: widget._results.placed, timeout=60_000)
    layer = widget._results.layers["restored"]
    assert np.asarray(layer._slice.image.raw).max() == 0  # the layer exists before any chunk
    for n in range(3):
        gate.release()
        qtbot.waitUntil(lambda: widget._results.chunks == n + 1, timeout=60_000)
        assert (np.asarray(layer._slice.image.raw).std() > 0) == (n == 2)  # slice 2 shows when written
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    monkeypatch.setattr(streaming, "restore_chunk", restore_chunk)

    assert not errors(notifications)
    found = results_of(viewer, source)
    assert set(found) == set(ROLES)
    assert isinstance(found["restored"].data, zarr.Array) and isinstance(found["mask"].data, da.Array)
    np.testing.assert_allclose(found["restored"].scale, (10, 10, 10))
    assert widget.run_state.status.startswith("restored 3 chunk(s) into")

    core = stream_restore(store, tmp_path / "core.zarr", str(tiny_model_dir), device="cpu")
    np.testing.assert_array_equal(found["restored"].data[...], open_result(core.output)[...])
    np.testing.assert_array_equal(np.asarray(found["mask"].data), open_result(core.output, "mask")[...])
    widget.view.threshold = 0.0  # the slider applies at once, without rewriting the store
    assert np.asarray(found["mask"].data).mean() > 0.99
    assert store[...].tolist() == load_fibsem()[:3, :96, :96].tolist()  # the input is untouched


def test_streamed_store_records_the_layer_grid_validates_and_reopens_as_shown(dock, qtbot, tiny_model_dir, tmp_path,
                                                                              notifications):
    """The store of a widget run is OME-Zarr 0.5 on the layer's grid (scale, units, translate);
    opened with the plugin's reader, it shows as the widget showed it."""
    from conftest import layer_look, validated_ome_zarr
    from napari_emdiffuse.io import read_calibration
    from napari_emdiffuse.results import output_paths

    viewer, widget = dock
    volume = load_fibsem()[:2, :64, :64]
    store = zarr.open_array(tmp_path / "fib.zarr", mode="w", shape=volume.shape, chunks=(1, 64, 64), dtype=volume.dtype)
    store[:] = volume
    source = viewer.add_image(store, name="fib", scale=(10, 10, 10), units="nm", translate=(500, 20, 40))
    widget.image.value = source
    widget.settings.model = str(tiny_model_dir)
    widget.settings.scope = "whole stack"
    widget.settings.store = str(tmp_path / "restored.zarr")
    run(widget, qtbot)
    assert not errors(notifications)

    for field, path in output_paths(tmp_path / "restored.zarr").items():
        validated_ome_zarr(path, labels=field == "mask")
        calibration = read_calibration(path)
        assert calibration.voxel_size == (10, 10, 10) and calibration.translation == (500, 20, 40)
        assert calibration.units == ("nanometer",) * 3
    shown = results_of(viewer, source)
    opened = viewer.open(tmp_path / "restored.zarr", plugin="napari-emdiffuse")
    assert [layer.name for layer in opened] == ["restored restored", "restored uncertainty (std)",
                                                "restored aleatoric (std)", "restored unreliable",
                                                "restored predicted error"]
    for role, layer in zip(ROLES, opened):
        assert layer_look(layer) == layer_look(shown[role]), role
    np.testing.assert_array_equal(opened[0].data[...], shown["restored"].data[...])


def test_cancelled_stream_keeps_written_chunks_and_resumes(dock, qtbot, tiny_model_dir, tmp_path, notifications):
    viewer, widget = dock
    _, source = zarr_layer(viewer, tmp_path, depth=6)
    widget.image.value = source
    widget.settings.model = str(tiny_model_dir)
    widget.settings.steps = 6
    widget.start()
    qtbot.waitUntil(lambda: widget._results.chunks >= 1, timeout=120_000)
    widget.run.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    kept = widget._results.chunks
    assert 1 <= kept < 6 and "run again to resume" in widget.run_state.status
    restored = results_of(viewer, source)["restored"]
    assert restored.data[0].std() > 0 and restored.data[5].max() == 0  # kept on disk and shown

    run(widget, qtbot)
    assert widget._results.chunks == 6 - kept
    assert widget.run_state.status.endswith(f"({kept} from an earlier run)")
    assert all(results_of(viewer, source)["restored"].data[z].std() > 0 for z in range(6))
    assert not errors(notifications)


def test_cancel_keeps_finished_slices(dock, qtbot, tiny_model_dir, notifications):
    viewer, widget = dock
    (source,) = viewer.open_sample("napari-emdiffuse", "sstem")
    widget.settings.model = str(tiny_model_dir)
    widget.settings.scope = "whole stack"
    widget.start()
    qtbot.waitUntil(lambda: bool(widget._results and widget._results.finished), timeout=120_000)
    pressed = time.perf_counter()
    widget.run.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert time.perf_counter() - pressed < 5  # stops at the next network batch

    restored = results_of(viewer, source)["restored"]
    kept = restored.data.shape[0]
    assert 1 <= kept < 30
    assert all(restored.data[z].std() > 0 for z in range(kept))  # whole, finished slices only
    assert all(layer.data.shape[0] == kept for layer in results_of(viewer, source).values())
    assert ("info", f"cancelled: kept {kept} finished slice(s)") in notifications
    assert widget.run.run_button.enabled and not widget.run.cancel_button.enabled


def test_event_loop_keeps_turning_during_restore(dock, qtbot, tiny_model_dir, event_loop_watch):
    """The Qt event loop keeps turning while the model runs. The first run builds the result
    layers (napari's own work on the GUI thread, one layer per loop turn); the re-run that
    replaces them is measured."""
    viewer, widget = dock
    source = viewer.add_image(load_fibsem()[:4], name="fib")
    widget.image.value = source
    widget.settings.model = str(tiny_model_dir)
    widget.settings.scope = "whole stack"
    widget.settings.steps = 8  # long enough (well over 0.5 s) on a quiet machine to measure
    run(widget, qtbot)
    with event_loop_watch() as watch:
        run(widget, qtbot)
    assert watch.seconds > 0.5 and watch.kept_turning(max_gap=0.5), str(watch)


def test_threshold_readout_and_toggles(dock, qtbot, tiny_model_dir):
    viewer, widget = dock
    source = viewer.add_image(load_pair()[0][:128, :256], name="noisy")
    widget.image.value = source
    widget.settings.model = str(tiny_model_dir)
    run(widget, qtbot)
    found = results_of(viewer, source)
    assert widget.view.threshold == pytest.approx(0.2)  # taken from the model card
    span = found["mask"].metadata["emdiffuse"]["span"]
    expected = (found["std"].data * 2 / span > 0.2).mean()
    assert widget.view.unreliable_fraction == pytest.approx(expected)

    widget.uncertainty.threshold.value = 0.0  # the slider updates the mask live
    assert found["mask"].data.mean() == pytest.approx((found["std"].data > 0).mean())
    assert widget.view.unreliable_fraction == pytest.approx(found["mask"].data.mean())
    widget.uncertainty.threshold.value = 1.0
    assert found["mask"].data.sum() == (found["std"].data * 2 / span > 1.0).sum()

    # the readout counts what is in view: zoom onto one corner of a mask with known content
    found["mask"].data[...] = 0
    found["mask"].data[:64, :64] = 1
    viewer.window._qt_viewer.canvas.size = (400, 400)
    viewer.scene.camera.center = (16, 16)
    viewer.scene.camera.zoom = 20
    viewer.window._qt_viewer.canvas.on_draw(None)
    widget.uncertainty.update_readout()
    assert widget.view.unreliable_fraction == 1.0
    viewer.reset_view()
    viewer.window._qt_viewer.canvas.on_draw(None)
    widget.uncertainty.update_readout()
    assert widget.view.unreliable_fraction == pytest.approx(64 * 64 / (128 * 256), rel=0.1)

    widget.uncertainty.toggles["std"].value = False
    assert not found["std"].visible
    found["mask"].visible = False  # the layer list's eye icon moves the toggle as well
    assert widget.uncertainty.toggles["mask"].value is False
    widget.uncertainty.toggles["aleatoric"].value = True
    assert found["aleatoric"].visible


def test_superres_layers_sit_on_the_source_grid(dock, qtbot, tiny_superres_dir):
    viewer, widget = dock
    source = viewer.add_image(load_pair()[0][:64, :64], name="lowres", scale=(8.0, 8.0), translate=(40, 0))
    widget.image.value = source
    widget.settings.task = "superres"
    widget.settings.model = str(tiny_superres_dir)
    run(widget, qtbot)
    restored = results_of(viewer, source)["restored"]
    assert restored.data.shape == (128, 128)
    np.testing.assert_allclose(restored.scale, (4.0, 4.0))
    np.testing.assert_allclose(restored.translate, (40 - 2, -2))
    def pixel_box(layer):  # napari's world extent runs from the first to the last pixel centre
        return layer.extent.world + np.array([-1, 1])[:, None] * layer.scale / 2

    np.testing.assert_allclose(pixel_box(restored), pixel_box(source))  # the same field of view


def test_placement_keeps_pixel_boxes():
    class Layer:
        scale, translate, ndim, multiscale = (50.0, 4.0, 4.0), (10.0, 0.0, 0.0), 3, False
        data = np.zeros((5, 100, 100))

    scale, translate = placement(Layer, (300, 300), first_z=2)
    np.testing.assert_allclose(scale, (50, 4 / 3, 4 / 3))
    # the first output pixel's box starts where the first input pixel's box starts
    np.testing.assert_allclose(translate[1:] - scale[1:] / 2, -2.0)
    assert translate[0] == 10 + 2 * 50


def test_bad_choices_notify_instead_of_raising(dock, qtbot, tiny_model_dir, notifications, tmp_path):
    viewer, widget = dock
    widget.settings.model = str(tiny_model_dir)
    labels = viewer.add_labels(np.zeros((32, 32), np.uint8), name="segmentation")
    widget.image.value = labels
    widget.start()
    assert not widget.running and "Labels layer" in errors(notifications)[-1]

    rgb = viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="photo", rgb=True)
    widget.image.value = rgb
    widget.start()
    assert not widget.running and "RGB image" in errors(notifications)[-1]

    image = viewer.add_image(load_pair()[0][:64, :64], name="noisy")
    widget.image.value = image
    widget.settings.model = str(tmp_path / "missing" / "model_Network_ema.pth")
    widget.start()
    assert not widget.running and "does not exist" in errors(notifications)[-1]

    broken = tmp_path / "broken_Network.pth"
    broken.write_bytes(b"not a checkpoint")
    widget.settings.model = str(broken)
    run(widget, qtbot)  # fails in the worker: reported the same way
    assert "not a readable weights file" in errors(notifications)[-1]
    assert "failed" in widget.run_state.status and widget.run.run_button.enabled

    widget.settings.model = str(tiny_model_dir)
    widget.settings.task = "superres"  # a denoising model for a super-resolution task
    run(widget, qtbot)
    assert "not a superres model" in errors(notifications)[-1]
    assert not results_of(viewer, image)
    assert len(errors(notifications)) == 5



def test_closing_the_viewer_mid_run_stops_the_work(make_napari_viewer, emdiffuse_plugin, qtbot, tiny_model_dir):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Restore")
    qtbot.waitUntil(lambda: widget.env.ready, timeout=60_000)
    viewer.add_image(load_fibsem()[:8], name="fib")
    widget.settings.model = str(tiny_model_dir)
    widget.start()
    qtbot.waitUntil(lambda: bool(widget._results and widget._results.finished), timeout=120_000)
    cancel, worker = widget._cancel, widget._worker
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30_000)  # late updates are dropped quietly
    assert cancel.is_set()
