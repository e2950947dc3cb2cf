"""Screenshot of napari with a restored EM image, its uncertainty overlay and reliability mask.

    xvfb-run -a python3 docs/make_screenshot.py --model demo-denoise -o docs/napari_restore.png

Restores a crop of the test rows (0-159, evaluation.SPLITS) of the bundled 4 us SEM image through the Restore
widget at the model card's settings, exactly as a user would, and saves the whole window (canvas, layer list and the widget).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = (slice(0, 160), slice(256, 512))  # test rows: never read in training, selection or calibration


def register_plugin() -> None:
    """Use this checkout's manifest when the package is not pip-installed."""
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    if "napari-emdiffuse" not in pm:
        pm.register(PluginManifest.from_file(ROOT / "napari_emdiffuse" / "napari.yaml"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo-denoise", help="preset name, checkpoint or run folder")
    ap.add_argument("-o", "--output", default=str(ROOT / "docs" / "napari_restore.png"))
    ap.add_argument("--samples", type=int, default=0, help="0: the model card's default")
    ap.add_argument("--steps", type=int, default=0, help="0: the model card's default")
    ap.add_argument("--size", type=int, nargs=2, default=(1400, 800), metavar=("W", "H"))
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the restore")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    # napari's default settings in a throwaway file: reproducible, and the user's stay untouched
    os.environ["NAPARI_CONFIG"] = os.path.join(tempfile.mkdtemp(), "settings.yaml")
    import napari
    from napari.settings import get_settings

    get_settings().application.gui_notification_level = "error"  # no toasts over the picture
    from napari_emdiffuse._widgets._threading import wait_while
    from napari_emdiffuse.sample_data import load_pair

    register_plugin()
    viewer = napari.Viewer(title="napari-emdiffuse")
    viewer.window._qt_window.resize(*args.size)
    noisy = load_pair()[0][HELD_OUT]
    source = viewer.add_image(noisy, name="SEM 4 us (test rows)")
    _, widget = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Restore")
    widget.image.value = source
    wait_while(lambda: not widget.env.ready, 60)  # the preset list first, so the picker shows the preset
    widget.settings.model, widget.settings.samples, widget.settings.steps = args.model, args.samples, args.steps

    widget.start()
    widget.wait(args.timeout)
    if widget.running or not widget._results or not widget._results.placed:
        print(f"the restore did not finish: {widget.run_state.status}", file=sys.stderr)
        return 1
    # the input beside the result for comparison (a display copy, above it: the crop is wide)
    viewer.add_image(noisy, name="input (4 us)", translate=(-noisy.shape[0] - 8, 0))
    source.visible = False
    widget.view.show_mask = False  # the overlay alone reads best at this size; the toggle shows it
    viewer.layers.selection.active = widget._results.layers["restored"]
    viewer.reset_view()
    viewer.window._qt_viewer.canvas.on_draw(None)  # so the readout sees the visible region
    widget.uncertainty.update_readout()
    napari.qt.get_qapp().processEvents()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(args.output, canvas_only=False)
    print(f"{args.output}: {widget.run_state.status}; {widget.uncertainty.readout.value}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
