"""The Training widget in a real napari viewer (run under Xvfb): it trains a few steps on real SEM
layers in a worker while the event loop keeps turning, the loss plot receives points, the preview
layer refreshes; Stop, Resume and Save; misregistered pairs are reported and aligned on request."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from napari_emdiffuse.loading import load_model
from napari_emdiffuse.sample_data import load_pair, load_sstem
from napari_emdiffuse.training.trainer import Trainer


@pytest.fixture
def dock(make_napari_viewer, emdiffuse_plugin, qtbot):
    """A viewer with the Training widget docked through the plugin manifest, and a real SEM pair."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Training")
    qtbot.waitUntil(lambda: widget.env.ready, timeout=60_000)  # devices/presets, probed off-thread
    noisy, clean = load_pair()
    layers = {"noisy": viewer.add_image(noisy[:128, :160], name="noisy"),
              "clean": viewer.add_image(clean[:128, :160], name="clean"),
              "shifted": viewer.add_image(clean[7:135, :160], name="clean, 7 rows off")}
    widget.layer_pickers["noisy"].value = layers["noisy"]
    widget.layer_pickers["clean"].value = layers["clean"]
    yield viewer, widget, layers
    widget.stop()
    widget.wait()


def fast(widget, tmp_path, steps=4):
    widget.settings.update(patch=32, batch_size=2, steps=steps, lr=1e-3, device="cpu", run_dir=str(tmp_path / "run"))


def train(widget, qtbot, resume=False, timeout=120):
    (widget.resume if resume else widget.start)()
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout * 1000)


def shown(widget) -> bool:
    return not widget.native.isHidden()  # the viewer's window itself is not shown in tests


def errors(notifications):
    return [message for severity, message in notifications if severity == "error"]


def test_trains_in_a_worker_while_the_viewer_stays_responsive(dock, qtbot, tmp_path, notifications, event_loop_watch):
    viewer, widget, _ = dock
    fast(widget, tmp_path / "first")
    assert widget.plot.backend == "pyqtgraph"
    # The first run builds the preview layer (napari's own work on the GUI thread); the next is measured.
    train(widget, qtbot)
    fast(widget, tmp_path)
    with event_loop_watch() as watch:
        train(widget, qtbot)
    assert watch.seconds > 0.5 and watch.kept_turning(max_gap=0.5), str(watch)
    assert not errors(notifications)
    # Every step reached the plot; validation about ten times a run (here every step).
    assert widget.plot.train[0] == [1, 2, 3, 4] and all(np.isfinite(widget.plot.train[1]))
    assert widget.plot.val[0] == [1, 2, 3, 4]
    curve_x, _ = widget.plot._train_curve.getData()
    assert list(curve_x) == [1, 2, 3, 4]
    preview = viewer.layers["training preview (input | estimate | target)"]
    assert preview.data.shape == (32, 3 * 32 + 2 * 2)
    assert "trained 4 steps" in widget.run_state.status
    model = load_model(tmp_path / "run", task="denoise")  # the run folder is a model Restore takes
    assert model.card["training"]["step"] == 4 and widget.resume_button.enabled


def test_stop_then_resume_continues_the_run(dock, qtbot, tmp_path, notifications):
    _, widget, _ = dock
    fast(widget, tmp_path, steps=6)
    widget.start()
    qtbot.waitUntil(lambda: widget.run_state.step >= 2, timeout=120_000)
    widget.stop()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    stopped_at = widget.run_state.step
    assert 2 <= stopped_at < 6 and "stopped at step" in widget.run_state.status
    assert widget.resume_button.enabled and widget.train_button.enabled and not widget.stop_button.enabled

    train(widget, qtbot, resume=True)
    assert not errors(notifications)
    assert widget.plot.train[0] == list(range(1, 7))  # the resumed curve carries on from the stored one
    history = torch.load(tmp_path / "run" / "state.pt", weights_only=True)["history"]
    assert [h["step"] for h in history] == list(range(1, 7))
    # Train (not Resume) into the same folder would overwrite it: refused with what to do.
    train(widget, qtbot)
    assert "already holds a training run" in errors(notifications)[-1]


def test_save_writes_a_checkpoint_after_the_current_step(dock, qtbot, tmp_path, monkeypatch):
    _, widget, _ = dock
    saved_at = []
    original = Trainer.save
    monkeypatch.setattr(Trainer, "save", lambda self: (saved_at.append(self.step), original(self))[1])
    fast(widget, tmp_path, steps=40)  # checkpoints every 4 steps by themselves
    widget.start()
    qtbot.waitUntil(lambda: widget.run_state.step >= 1 and widget.save_button.enabled, timeout=120_000)
    widget.save()
    pressed_at = widget.run_state.step
    qtbot.waitUntil(lambda: any(s >= pressed_at and s % 4 for s in saved_at) or len(saved_at) > 3, timeout=60_000)
    widget.stop()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert any(pressed_at <= s <= pressed_at + 2 and s % 4 for s in saved_at), (pressed_at, saved_at)
    card = yaml.safe_load((tmp_path / "run" / "card.yaml").read_text())
    assert card["training"]["step"] == widget.run_state.step


def test_misregistered_pair_is_reported_then_aligned_on_request(dock, qtbot, tmp_path, notifications):
    _, widget, layers = dock
    widget.layer_pickers["clean"].value = layers["shifted"]
    widget.check_registration()
    qtbot.waitUntil(lambda: any("offset" in m for _, m in notifications), timeout=60_000)
    assert any(severity == "warning" and "align misregistered pairs" in m for severity, m in notifications)

    fast(widget, tmp_path, steps=2)
    train(widget, qtbot)
    assert "offset from the input" in errors(notifications)[-1]
    assert "failed" in widget.run_state.status and not (tmp_path / "run").exists()

    widget.settings.register = True
    assert widget.register.value is True
    train(widget, qtbot)
    assert len(errors(notifications)) == 1
    assert any("aligned 1 misregistered image" in m for _, m in notifications)
    assert load_model(tmp_path / "run").card["training"]["data"]["aligned"] == 1


def test_isotropic_from_an_anisotropic_stack_layer(dock, qtbot, tmp_path, notifications):
    viewer, widget, _ = dock
    stack = viewer.add_image(load_sstem()[:, :96, :96], name="sstem")
    widget.settings.task = "isotropic"
    assert shown(widget.layer_pickers["volume"]) and not shown(widget.layer_pickers["noisy"])
    assert shown(widget.z_factor) and not shown(widget.register)
    widget.layer_pickers["volume"].value = stack
    widget.settings.update(z_factor=3, anisotropic=True)
    fast(widget, tmp_path, steps=2)
    widget.settings.patch = 24  # the resliced planes are 30 sections tall
    train(widget, qtbot)
    assert not errors(notifications)
    model = load_model(tmp_path / "run", task="isotropic")
    assert model.card["isotropic"]["z_factor"] == 3 and model.card["isotropic"]["route"] == "anisotropic"


def test_choices_that_cannot_train_notify_instead_of_raising(dock, qtbot, tmp_path, notifications):
    _, widget, _ = dock
    widget.layer_pickers["noisy"].value = None
    widget.start()
    assert not widget.running and "choose the noisy image layer" in errors(notifications)[-1]
    widget.layer_pickers["noisy"].value = widget.viewer.layers["noisy"]
    widget.settings.start = "fine-tune a model"
    assert shown(widget.model) and not shown(widget.preset)
    widget.settings.model = ""
    widget.start()
    assert "choose the model to fine-tune" in errors(notifications)[-1]
    widget.settings.update(start="new model", preset="base")
    assert (widget.settings.patch, widget.settings.batch_size) == (256, 4)  # the preset's suggestions
    widget.settings.update(preset="tiny", run_dir=str(tmp_path / "run"), steps=2, device="cpu")
    train(widget, qtbot)  # 160 x 128 images cannot hold 96-pixel patches and a validation band
    assert "smaller patch size" in errors(notifications)[-1]


def test_loss_plot_falls_back_to_plain_qt_without_pyqtgraph(qtbot, monkeypatch):
    import sys

    from qtpy.QtGui import QImage

    from napari_emdiffuse._widgets.training_plot import LossPlot

    monkeypatch.setitem(sys.modules, "pyqtgraph", None)  # as if it were not installed
    plot = LossPlot()
    qtbot.addWidget(plot.widget)
    assert plot.backend == "qt"
    plot.set_history([{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4, "val_loss": 0.3}])
    plot.add(3, 0.2, 0.25)
    assert plot.val == ([2, 3], [0.3, 0.25])
    assert plot.summary() == "step 3: loss 0.2000, validation 0.2500"
    plot.widget.resize(200, 120)
    image = QImage(plot.widget.size(), QImage.Format_ARGB32)
    image.fill(0)
    plot.widget.render(image)  # both curves are drawn: pixels of each colour
    colours = {image.pixelColor(x, y).name() for x in range(200) for y in range(120)}
    assert {"#8ab4f8", "#f28b82"} <= colours
