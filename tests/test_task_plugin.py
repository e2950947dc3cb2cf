"""A new task is a plug-in and one registration, nothing else: a toy task defined here (its
network sees the negative of the image) runs end to end through the engine, the CLI and the
Restore widget in a real napari viewer."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from conftest import TINY_CARD
from napari_emdiffuse.cli import main
from napari_emdiffuse.api import restore
from napari_emdiffuse.sample_data import load_pair
from napari_emdiffuse.tasks import get_task, register, task_names, unregister
from napari_emdiffuse.tasks.base import Task


class Negative(Task):
    """The toy task: the network is conditioned on the negative of each slice."""

    name = "toy-negative"
    label = "toy negative"
    summary = "restore the negative of an image (a test task)"

    def condition(self, model, plane, geometry):
        return -plane[None, None]


@pytest.fixture
def toy_task():
    task = register(Negative())
    yield task
    unregister(task.name)


@pytest.fixture
def toy_run(toy_task, tmp_path):
    """An untrained residual UNet of the toy task: its output layer starts at zero, so its
    estimate is exactly its condition, the negative of the normalised input."""
    from napari_emdiffuse.model import model_from_card
    from napari_emdiffuse.training.runs import save_model

    card = dict(TINY_CARD, name="toy", task=toy_task.name,
                network=dict(TINY_CARD["network"], kind="residual_unet", aleatoric=False),
                diffusion=dict(TINY_CARD["diffusion"], samples=1, estimate="posterior_mean"))
    torch.manual_seed(0)
    save_model(card, model_from_card(card).network.state_dict(), tmp_path / "toy-run")
    return tmp_path / "toy-run"


def negative_of(image, info) -> np.ndarray:
    lo, hi = info["normalizer"]
    return np.clip(np.rint(lo + hi - image.astype(np.float64)), 0, 255)


def test_a_registered_task_runs_through_the_engine_the_cli_and_the_widget(toy_run, tmp_path, make_napari_viewer,
                                                                         emdiffuse_plugin, qtbot, capsys):
    assert "toy-negative" in task_names() and get_task("toy-negative").label == "toy negative"
    image = load_pair()[0][:64, :96]

    # the engine
    result = restore(image, str(toy_run), device="cpu")
    assert result.mean.shape == image.shape and result.mean.dtype == np.uint8
    assert result.info["task"] == "toy-negative"
    np.testing.assert_allclose(result.mean, negative_of(image, result.info), atol=1)

    # the CLI: a subcommand of its own, the same outputs as every task
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, image)
    assert main(["toy-negative", str(source), "-o", str(tmp_path / "out.tif"), "--model", str(toy_run),
                 "--device", "cpu"]) == 0
    assert "toy-negative: in.tif 64x96 uint8" in capsys.readouterr().out
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), result.mean)

    # the Restore widget offers it and shows its result
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Restore")
    qtbot.waitUntil(lambda: widget.env.ready, timeout=60_000)
    assert "toy-negative" in widget.task.choices
    widget.image.value = viewer.add_image(image, name="sem")
    widget.settings.task = "toy-negative"
    widget.settings.model = str(toy_run)
    widget.settings.device = "cpu"
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    np.testing.assert_array_equal(viewer.layers["sem restored"].data, result.mean)


def test_an_unknown_task_is_an_error_never_a_fallback(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'deblur'"):
        get_task("deblur")
    from napari_emdiffuse.model import model_from_card

    with pytest.raises(ValueError, match="task must be one of"):
        model_from_card(dict(TINY_CARD, task="deblur"))
