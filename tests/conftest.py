"""Shared test settings."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tests use tiny tensors: on a busy machine torch's intra-op threads wait on each other and
    # make them 10-100x slower, while one thread loses nothing.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def device():
    """The device tests that take one run on: $EMDIFFUSE_TEST_DEVICE (benchmarks/gpu_check.sh sets
    cuda), the CPU by default, so CI is unchanged."""
    import os

    return torch.device(os.environ.get("EMDIFFUSE_TEST_DEVICE", "cpu"))


# A tiny network (four levels, so the middle attention sees few tokens): widget and CLI tests
# exercise the real code path without the trained demo model.
TINY_CARD = {
    "name": "tiny-test",
    "task": "denoise",
    "description": "random-init tiny network for tests",
    "network": {"kind": "unet", "dims": 2, "in_channel": 2, "out_channel": 1, "inner_channel": 8,
                "channel_mults": [1, 2, 2, 2], "res_blocks": 1, "attn_res": [], "num_head_channels": 8,
                "norm_groups": 4, "dropout": 0.0, "aleatoric": True},
    "diffusion": {"parameterization": "x0", "clip": [-1.5, 1.5], "sampler": "dpmpp_2m", "grid": "karras",
                  "steps": 2, "samples": 2},
    "tile": {"size": 128, "overlap": 16},
    "uncertainty": {"threshold": 0.2},
}


def write_tiny_run(folder, **card_changes):
    """Save a tiny, randomly initialised model as a run folder (card.yaml + weights.pt). Its
    weights are perturbed so that samples differ (the UNet's output layers start as zeros)."""
    from napari_emdiffuse.model import build_network
    from napari_emdiffuse.training.runs import save_model

    card = dict(TINY_CARD, **card_changes)
    torch.manual_seed(0)
    network = build_network(card["network"])
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_model(card, network.state_dict(), folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A run folder with a tiny aleatoric denoiser (2 steps, 2 samples, 128-pixel tiles)."""
    return write_tiny_run(tmp_path_factory.mktemp("tiny-run"))


@pytest.fixture(scope="session")
def iso_run(tmp_path_factory):
    """A run folder with a tiny vEMDiffuse-style isotropic model (z-factor 5, 64-pixel tiles)."""
    network = dict(TINY_CARD["network"], in_channel=3, slice_embedding=True)
    return write_tiny_run(tmp_path_factory.mktemp("tiny-iso-run"), name="tiny-isotropic", task="isotropic",
                          network=network, isotropic={"z_factor": 5}, tile={"size": 64, "overlap": 16})


@pytest.fixture(scope="session")
def sr_run(tmp_path_factory):
    """A run folder with a tiny 2x super-resolution model on 64-pixel tiles."""
    return write_tiny_run(tmp_path_factory.mktemp("tiny-sr-run"), name="tiny-superres", task="superres",
                          superres={"scale": 2}, tile={"size": 64, "overlap": 16})


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr) of ``emdiffuse ARGV`` run in this process."""
    from napari_emdiffuse.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def tiny_superres_dir(tmp_path_factory):
    """A run folder with a tiny 2x super-resolution model."""
    return write_tiny_run(tmp_path_factory.mktemp("tiny-superres-run"), name="tiny-superres",
                          task="superres", superres={"scale": 2})


@pytest.fixture
def emdiffuse_plugin(npe2pm):
    """Our napari.yaml registered with napari's plugin manager (no installed distribution needed)."""
    from pathlib import Path

    manifest = Path(__file__).parents[1] / "napari_emdiffuse" / "napari.yaml"
    with npe2pm.tmp_plugin(manifest=str(manifest)) as plugin:
        yield plugin


@pytest.fixture
def notifications():
    """The napari notifications shown during a test, as (severity, message) pairs."""
    from napari.utils.notifications import notification_manager

    shown = []

    def record(notification):
        shown.append((str(notification.severity), notification.message))

    notification_manager.notification_ready.connect(record)
    yield shown
    notification_manager.notification_ready.disconnect(record)


class EventLoopWatch:
    """Counts the ticks of a 10 ms Qt timer while the ``with`` block runs: a GUI thread busy with
    work (instead of a worker thread doing it) shows as long gaps between ticks."""

    def __enter__(self):
        import time

        from qtpy.QtCore import QTimer

        self.ticks, self._clock = [], time.perf_counter
        self._timer = QTimer()
        self._timer.timeout.connect(lambda: self.ticks.append(self._clock()))
        self.started = self._clock()
        self._timer.start(10)
        return self

    def __exit__(self, *exc):
        self._timer.stop()
        self.seconds = self._clock() - self.started
        import numpy as np

        self.longest_gap = float(np.diff([self.started, *self.ticks, self._clock()]).max())

    def kept_turning(self, max_gap: float = 0.5) -> bool:
        """At least one tick per 50 ms on average and never a gap over ``max_gap`` seconds."""
        return len(self.ticks) > self.seconds / 0.05 and self.longest_gap < max_gap

    def __str__(self) -> str:
        return f"{len(self.ticks)} ticks in {self.seconds:.1f} s, longest gap {self.longest_gap:.2f} s"


@pytest.fixture
def event_loop_watch(qtbot):
    """``with event_loop_watch() as watch: ...; assert watch.kept_turning(), watch``"""
    return EventLoopWatch


class ConditionNet(torch.nn.Module):
    """A network whose x0 estimate is its (first) condition channel: restoration with it must
    hand back the input exactly (super-resolution: the bicubic baseline)."""

    dims, aleatoric, downsample_factor = 2, False, 4

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, noise_level):
        return x[:, :1] + 0 * self.dummy



def validated_ome_zarr(path, labels: bool = False):
    """The store as ome-zarr-models reads it: an OME-Zarr 0.5 image (or, ``labels``, image-label)
    group; anything else fails the test."""
    import ome_zarr_models
    import zarr
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    model = ome_zarr_models.open_ome_zarr(zarr.open_group(str(path), mode="r"), version="0.5")
    assert type(model) is (ImageLabel if labels else Image), type(model)
    return model


def layer_look(layer) -> dict:
    """What a user sees of a napari layer: its kind, colours, blending, opacity, visibility and
    grid (scale, translate, units)."""
    import numpy as np

    seen = {"kind": type(layer).__name__, "blending": layer.blending, "opacity": layer.opacity,
            "visible": layer.visible, "scale": tuple(layer.scale), "translate": tuple(layer.translate),
            "units": tuple(str(u) for u in layer.units)}
    if seen["kind"] == "Labels":
        seen["colours"] = {k: tuple(np.round(v, 3)) for k, v in layer.colormap.color_dict.items() if k is not None}
    else:
        seen["colours"] = (layer.colormap.name, np.round(layer.colormap.colors, 3).tolist())
    return seen
