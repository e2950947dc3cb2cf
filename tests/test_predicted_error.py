"""The predicted-error map as users get it: written next to every restored file (OUT_uncertainty),
computed as the model card calibrates it, the basis of the reliability mask where the card says
so, a warning for an input beyond what the model was validated on, and the napari overlay shown
by default with a readout in grey levels."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from conftest import TINY_CARD, write_tiny_run
from napari_emdiffuse.cli import main
from napari_emdiffuse.sample_data import load_pair
from napari_emdiffuse.uncertainty import predicted_error

CALIBRATION = {"weights": {"aleatoric": 1.5, "spread": 0.5}, "smoothing_px": 2.0}
THRESHOLD = 1.62  # about the median of the tiny random network's predicted error ([-1, 1] units)


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """A tiny model whose card calibrates the predicted error and fits its threshold on it."""
    uncertainty = {"predicted_error": CALIBRATION, "mask_from": "predicted_error", "threshold": THRESHOLD}
    return write_tiny_run(tmp_path_factory.mktemp("calibrated"), uncertainty=uncertainty)


@pytest.fixture
def sem(tmp_path):
    path = tmp_path / "sem.tif"
    tifffile.imwrite(path, load_pair()[0][:64, :96])
    return path


def test_cli_writes_the_calibrated_predicted_error_and_masks_with_it(calibrated_run, sem, tmp_path, capsys):
    out = tmp_path / "out.tif"
    assert main(["denoise", str(sem), "-o", str(out), "--model", str(calibrated_run), "--device", "cpu"]) == 0
    summary = capsys.readouterr().out
    predicted = tifffile.imread(tmp_path / "out_uncertainty.tif")
    std, aleatoric = tifffile.imread(tmp_path / "out_std.tif"), tifffile.imread(tmp_path / "out_aleatoric.tif")
    assert predicted.dtype == np.float32 and predicted.shape == (64, 96) and (predicted > 0).all()
    np.testing.assert_allclose(predicted, predicted_error(std, aleatoric, CALIBRATION), rtol=1e-5)
    assert "predicted error" in summary and "grey levels RMS" in summary
    # the mask is the predicted error above the threshold, in the model's [-1, 1] units
    from napari_emdiffuse.normalize import Normalizer

    norm = Normalizer.for_card(tifffile.imread(sem), {"low": 0.1, "high": 99.9})
    expected = predicted * 2 / (norm.hi - norm.lo) > THRESHOLD
    mask = tifffile.imread(tmp_path / "out_mask.tif")
    assert np.mean(mask == expected) > 0.999 and 0 < mask.mean() < 1


def test_an_input_beyond_validation_is_reported(tmp_path_factory, sem, tmp_path, capsys):
    narrow = write_tiny_run(tmp_path_factory.mktemp("narrow"),
                            uncertainty={"predicted_error": CALIBRATION, "validated": {"limit": 1e-4}})
    assert main(["denoise", str(sem), "-o", str(tmp_path / "out.tif"), "--model", str(narrow), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "beyond what tiny-test was validated on" in err and "above the validated" in err
    wide = write_tiny_run(tmp_path_factory.mktemp("wide"), uncertainty={"predicted_error": CALIBRATION,
                                                                         "validated": {"limit": 100.0}})
    assert main(["denoise", str(sem), "-o", str(tmp_path / "ok.tif"), "--model", str(wide), "--device", "cpu"]) == 0
    assert "beyond" not in capsys.readouterr().err


def test_overlay_shows_the_predicted_error_by_default_with_a_readout(make_napari_viewer, emdiffuse_plugin, qtbot,
                                                                     calibrated_run, notifications):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Restore")
    qtbot.waitUntil(lambda: widget.env.ready, timeout=60_000)
    widget.image.value = viewer.add_image(load_pair()[0][:64, :96], name="sem")
    widget.settings.model = str(calibrated_run)
    widget.settings.device = "cpu"
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    predicted = viewer.layers["sem predicted error"]
    assert predicted.visible and not viewer.layers["sem uncertainty (std)"].visible
    assert "predicted error" in widget.uncertainty.readout.value and "grey levels" in widget.uncertainty.readout.value
    assert "flagged unreliable" in widget.uncertainty.readout.value
    # the threshold slider recomputes the mask from the predicted error, not from the std
    widget.view.threshold = 0.0
    assert np.asarray(viewer.layers["sem unreliable"].data).all()


def test_uncalibrated_models_still_get_a_map(tmp_path_factory):
    from napari_emdiffuse import restore

    run = write_tiny_run(tmp_path_factory.mktemp("plain"), diffusion=dict(TINY_CARD["diffusion"], samples=1))
    result = restore(load_pair()[0][:48, :48], str(run), device="cpu")
    assert result.std is None and result.uncertainty is not None  # from the aleatoric head alone
