"""The npe2 manifest: valid, contributed by the napari-emdiffuse distribution, every command
importable, every widget docks, every sample loads real data offline with its voxel size; and
napari start-up does not import torch."""
from __future__ import annotations

import configparser
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from npe2 import PluginManifest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "napari_emdiffuse"
MANIFEST = PluginManifest.from_file(PACKAGE / "napari.yaml")
WIDGETS = ("Restore", "Isotropic reconstruction", "Training")


def test_manifest_is_the_distributions():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert MANIFEST.name == setup["metadata"]["name"] == "napari-emdiffuse"
    entry = setup["options.entry_points"]["napari.manifest"].strip()
    assert entry == "napari-emdiffuse = napari_emdiffuse:napari.yaml"
    assert "napari.yaml" in setup["options.package_data"]["napari_emdiffuse"]


def test_every_command_resolves():
    for command in MANIFEST.contributions.commands:
        module, _, name = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), command.id
    assert [w.display_name for w in MANIFEST.contributions.widgets] == list(WIDGETS)


def test_each_widget_docks(make_napari_viewer, emdiffuse_plugin, qtbot):
    viewer = make_napari_viewer()
    docked = {}
    for name in WIDGETS:
        dock, docked[name] = viewer.window.add_plugin_dock_widget("napari-emdiffuse", name)
        assert dock.widget() is not None and docked[name].native.parent() is not None
        assert name in dock.name
    restore = docked["Restore"]
    # every widget probes torch in a worker: let each finish, or teardown finds a running thread
    probing = [w for w in docked.values() if hasattr(w, "env")]
    qtbot.waitUntil(lambda: all(w.env.ready for w in probing), timeout=60_000)
    assert restore.device.choices[0] == "auto" and "cpu" in restore.device.choices


@pytest.mark.parametrize("key, layers, shape, scale", [
    ("sem_pair", 2, (768, 768), (1.0, 1.0)),
    ("sstem", 1, (30, 256, 256), (50.0, 4.0, 4.0)),
    ("fibsem", 1, (64, 128, 128), (10.0, 10.0, 10.0)),
])
def test_sample_data_opens_offline(make_napari_viewer, emdiffuse_plugin, key, layers, shape, scale):
    viewer = make_napari_viewer()
    added = viewer.open_sample("napari-emdiffuse", key)
    assert len(added) == layers
    for layer in added:
        assert layer.data.shape == shape and layer.data.dtype == np.uint8
        assert tuple(layer.scale) == scale
        assert 20 < layer.data.mean() < 235 and layer.data.std() > 10  # real EM, not blank


def test_sample_data_is_small_and_documented():
    folder = PACKAGE / "sample_data"
    images = sorted(folder.glob("*.tif"))
    assert {p.name for p in images} == {"pair53_noisy_dwell4us.tif", "pair53_clean_dwell36us.tif",
                                        "sstem_isbi2012_crop.tif", "fibsem_flyem_crop.tif"}
    assert sum(p.stat().st_size for p in images) < 4.2e6
    provenance = (folder / "PROVENANCE.txt").read_text()
    for image in images:
        assert image.name in provenance
    assert "CC BY" in provenance and "LICENSE_flyem_fibsem.txt" in provenance
    assert "CREATIVE COMMONS" in (folder / "LICENSE_flyem_fibsem.txt").read_text()


def test_napari_start_up_does_not_import_torch():
    """What napari imports to list and build our contributions stays light: torch is imported
    when a restore runs (or off the GUI thread when the widget probes the devices)."""
    modules = sorted({c.python_name.partition(":")[0] for c in MANIFEST.contributions.commands})
    code = ("import sys, importlib\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "import napari_emdiffuse\n"
            "heavy = [m for m in ('torch', 'napari_emdiffuse.api', 'napari_emdiffuse.loading') if m in sys.modules]\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
