"""``emdiffuse export``: BioImage Model Zoo packages of a bundled preset and of EMDiffuse
checkpoints pass bioimageio.core's own test (what ``bioimageio test model.zip`` runs), offline;
the exported network is the restore core's single-pass posterior mean; bad input ends in one line
and exit status 2 with nothing written and nothing the user gave modified."""
from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from conftest import TINY_CARD, write_tiny_run
from napari_emdiffuse.cli import main
from napari_emdiffuse.interchange import bioimageio_export as bmz
from napari_emdiffuse.interchange.posterior_mean import PosteriorMeanNetwork
from napari_emdiffuse.loading import load_model
from napari_emdiffuse.noise import positional_noise
from napari_emdiffuse.api import restore
from napari_emdiffuse.sample_data import load_fibsem, load_pair, load_sstem
from napari_emdiffuse.tasks.superres import bin_mean

REFERENCE = Path(__file__).parent / "data" / "emdiffuse"
EMDIFFUSE_2D = REFERENCE / "emdiffuse_unet2d_small_Network.pth"
VEMDIFFUSE = REFERENCE / "vemdiffuse_unet_small_Network.pth"


@pytest.fixture
def offline(monkeypatch):
    """Every attempt to resolve a host name or open a connection fails, and is recorded."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def run_cli(capsys, *argv):
    code = main(["export", *[str(a) for a in argv]])
    out, err = capsys.readouterr()
    return code, out, err


def bioimageio_test(package: Path):
    """bioimageio.core's test of a package, as ``bioimageio test PACKAGE`` runs it."""
    from bioimageio.core import test_model

    summary = test_model(package)
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status == "failed"]
    return summary, failed


def passed_checks(summary) -> set[str]:
    return {" ".join(d.name.split()) for d in summary.details if d.status == "passed"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_preset_package_passes_bioimageio_test(tmp_path, capsys, offline):
    package = tmp_path / "out" / "demo-denoise.zip"
    code, out, err = run_cli(capsys, "demo-denoise", "-o", package, "--authors", "Ada Lovelace")
    assert code == 0, err
    assert "demo-denoise" in out and "bioimageio test" in out

    summary, failed = bioimageio_test(package)
    assert summary.status == "passed", failed
    checks = passed_checks(summary)
    for weights in ("pytorch_state_dict", "torchscript"):
        assert f"Reproduce test outputs from test inputs ({weights})" in checks
        assert f"Run {weights} inference for inputs with batch_size: 2 and size parameter n: 2" in checks

    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        readme = z.read("README.md").decode()
        architecture = z.read(bmz.ARCHITECTURE_FILE).decode()
    assert {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy", "weights.pt",
            "weights_torchscript.pt", bmz.ARCHITECTURE_FILE} <= names
    assert rdf["license"] == "MIT" and rdf["authors"] == [{"name": "Ada Lovelace"}]
    assert rdf["cite"][0]["doi"] == "10.1038/s41467-024-49125-z"
    assert "sampled uncertainty" in rdf["description"] and "napari-emdiffuse" in rdf["description"]
    assert "Sampled uncertainty needs napari-emdiffuse" in readme and "## Validation" in readme
    assert "import napari_emdiffuse" not in architecture and "from ." not in architecture
    kwargs = rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]
    assert kwargs["bin"] == 2 and kwargs["percentiles"] == [0.1, 99.9]  # the card's binned normalisation
    assert list(tmp_path.joinpath("out").iterdir()) == [package]  # no temporary files left behind
    assert offline == []


def test_emdiffuse_checkpoints_package_and_pass(tmp_path, capsys, offline):
    """A published-format EMDiffuse-n checkpoint (denoise) and a vEMDiffuse one (isotropic, whose
    z-factor the checkpoint does not record) export with the user's own test images and pass;
    checkpoints and images stay as they were."""
    sem, fib = tmp_path / "sem.tif", tmp_path / "fib.tif"
    tifffile.imwrite(sem, load_pair()[0][:70, :91])  # cropped to 70 x 90: sizes step by 2 from 64
    tifffile.imwrite(fib, load_fibsem()[0:12:4, :64, :64], photometric="minisblack")  # 3 sections 4 apart
    given = (EMDIFFUSE_2D, VEMDIFFUSE, sem, fib)
    before = {p: sha256(p) for p in given}
    for checkpoint, extra in ((EMDIFFUSE_2D, ["--test-image", sem]),
                              (VEMDIFFUSE, ["--test-image", fib, "--z-factor", 4])):
        package = tmp_path / f"{checkpoint.stem}.zip"
        code, out, err = run_cli(capsys, checkpoint, "-o", package, "--license", "MIT", *extra)
        assert code == 0, err
        summary, failed = bioimageio_test(package)
        assert summary.status == "passed", (checkpoint.name, failed)
        with zipfile.ZipFile(package) as z:
            rdf = yaml.safe_load(z.read("rdf.yaml"))
            shapes = [np.load(z.open(f)).shape for f in ("test_input.npy", "test_output.npy")]
        if checkpoint == VEMDIFFUSE:  # 2 gaps of 3 generated sections
            assert shapes == [(1, 1, 3, 64, 64), (1, 1, 9, 64, 64)]
            z_axes = [a for t in ("inputs", "outputs") for a in rdf[t][0]["axes"] if a.get("id") == "z"]
            assert z_axes[0]["scale"] == 4 and z_axes[1]["size"]["offset"] == -3
        else:
            assert shapes == [(1, 1, 70, 90)] * 2
    assert {p: sha256(p) for p in given} == before
    assert offline == []


class PluginNoise(PosteriorMeanNetwork):
    """The exported network started from the restore core's noise (seed 0, first sample, step 0)
    instead of its own hashed noise: then it must give restore's posterior-mean estimate."""

    def start_noise(self, height, width, stream, device):
        key = (stream // 65536, stream % 65536, 0, 0) if self.task == "isotropic" else (0, 0, 0)
        return torch.from_numpy(positional_noise((0, 0), (height, width), 0, key)).to(device)


@pytest.mark.parametrize("task", ["denoise", "superres", "isotropic"])
def test_exported_network_is_the_restore_posterior_mean(task, tmp_path):
    if task == "denoise":  # the real preset: its binned normalisation and x0 parameterisation
        model, image = load_model("demo-denoise"), load_pair()[0][576:704, :160]
    elif task == "superres":  # residual network on the bicubic condition, odd size (padding)
        folder = write_tiny_run(tmp_path / "sr", task="superres", superres={"scale": 2},
                                network=dict(TINY_CARD["network"], kind="residual_unet"))
        model, image = load_model(folder), bin_mean(load_sstem()[0, :100, :120], 2)
    else:  # the vEMDiffuse-layout network: slice embedding, condition [slice i+1, slice i]
        model, image = load_model(VEMDIFFUSE), load_fibsem()[0:9:4, :64, :72]
    plan = bmz.plan_export(model, license="MIT", z_factor=4 if task == "isotropic" else None)
    exported = bmz.build_network(plan)
    with_plugin_noise = PluginNoise(**plan.kwargs)
    with_plugin_noise.load_state_dict(exported.state_dict())
    options = {"z_factor": 4} if task == "isotropic" else {}
    expected = restore(image, model, samples=1, steps=1, estimate="posterior_mean", ensemble=1, tile=1024,
                       precision="fp32", device="cpu", **options).mean.astype(np.float32)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32))[None, None]
    with torch.no_grad():
        got = with_plugin_noise.eval()(x)[0, 0].numpy()
        own_noise = exported(x)[0, 0].numpy()
    assert got.shape == expected.shape
    if image.dtype == np.uint8:  # restore rounds to the input's dtype: off by one only at a .5
        got = np.clip(np.rint(got), 0, 255)
        assert np.abs(got - expected).max() <= 1 and np.mean(got != expected) < 0.01
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)
    if task == "denoise":  # a trained network: another noise start moves its estimate only a little
        assert 0 < np.abs(own_noise - got).mean() < 0.01 * float(expected.max() - expected.min())


def test_torchscript_runs_on_any_device_and_equals_the_network():
    """The tracer bakes the device of tensors made in forward; after the export's fix the traced
    UNet runs on the meta device (standing in for a GPU), and the script equals the network."""
    model = load_model(VEMDIFFUSE)
    network = bmz.build_network(bmz.plan_export(model, license="MIT", z_factor=3))
    scripted = bmz.torchscript_network(network)
    assert "cpu" not in scripted.network.code
    unet = scripted.network.to("meta")
    out = unet(torch.zeros(2, 3, 16, 16, device="meta"), torch.full((2,), 0.5, device="meta"),
               torch.tensor([0.0, 1.0], device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 1, 16, 16)
    scripted = bmz.torchscript_network(network)
    volume = torch.from_numpy(load_fibsem()[0:7:3, :40, :48].astype(np.float32))[None, None]
    with torch.no_grad():
        assert torch.equal(scripted(volume), network(volume))


def test_architecture_file_needs_only_torch(tmp_path):
    """The shipped source defines the network without napari-emdiffuse (here a residual
    super-resolution UNet): it gives the same output as the package's class."""
    run = write_tiny_run(tmp_path / "sr", task="superres", superres={"scale": 2},
                         network=dict(TINY_CARD["network"], kind="residual_unet"))
    plan = bmz.plan_export(load_model(run), license="MIT")
    network = bmz.build_network(plan)
    (tmp_path / "arch.py").write_text(bmz.architecture_source())
    torch.save(network.state_dict(), tmp_path / "weights.pt")
    image = bin_mean(load_sstem()[1, :128, :144], 2)
    np.save(tmp_path / "image.npy", image)
    with torch.no_grad():
        expected = network(torch.from_numpy(image)[None, None])[0, 0].numpy()
    script = (
        "import sys, json, importlib.util, numpy as np, torch\n"
        "sys.modules['napari_emdiffuse'] = None  # any import of the plugin fails\n"
        "torch.set_num_threads(1)\n"
        f"spec = importlib.util.spec_from_file_location('arch', {str(tmp_path / 'arch.py')!r})\n"
        "arch = importlib.util.module_from_spec(spec); spec.loader.exec_module(arch)\n"
        f"net = arch.PosteriorMeanNetwork(**json.loads({json.dumps(plan.kwargs)!r}))\n"
        f"net.load_state_dict(torch.load({str(tmp_path / 'weights.pt')!r}, weights_only=True))\n"
        f"x = torch.from_numpy(np.load({str(tmp_path / 'image.npy')!r}))[None, None]\n"
        "with torch.no_grad(): out = net.eval()(x)[0, 0].numpy()\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, out)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=0, atol=1e-3)
    assert expected.shape == (128, 144)


@pytest.fixture(scope="module")
def run_3d(tmp_path_factory):
    network = dict(TINY_CARD["network"], dims=3, in_channel=2, aleatoric=False)
    return write_tiny_run(tmp_path_factory.mktemp("tiny-3d-run"), name="tiny-3d", task="isotropic",
                          network=network, isotropic={"z_factor": 4})


@pytest.mark.parametrize("case, message", [
    (["no-such-model", "-o", "{tmp}/m.zip"], "no model file or preset named 'no-such-model'"),
    (["demo-denoise", "-o", "{tmp}/m.tif"], "is not a .zip path"),
    (["demo-denoise", "-o", "{tmp}"], "is not a .zip path"),
    (["demo-denoise", "-o", "{tmp}/folder.zip"], "is a folder"),
    (["demo-denoise", "-o", "{tmp}/data.zip"], "exists and is not a bioimageio package"),
    (["demo-denoise", "-o", "{tmp}/m.zip", "--license", "not-a-licence"], "not an SPDX licence identifier"),
    (["demo-denoise", "-o", "{tmp}/m.zip", "--z-factor", "3"], "--z-factor is for isotropic models"),
    ([str(EMDIFFUSE_2D), "-o", "{tmp}/m.zip"], "pass --license"),
    ([str(VEMDIFFUSE), "-o", "{tmp}/m.zip", "--license", "MIT"], "--z-factor"),
    (["{run_3d}", "-o", "{tmp}/m.zip"], "only 2D networks are exported"),
    (["demo-denoise", "-o", "{tmp}/m.zip", "--test-image", "{tmp}/stack.tif"], "takes a 2D image (Y, X)"),
    (["demo-denoise", "-o", "{tmp}/m.zip", "--test-image", "{tmp}/small.tif"], "at least 64"),
    (["demo-denoise", "-o", "{tmp}/m.zip", "--test-image", "{tmp}/missing.tif"], "does not exist"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, run_3d, case, message):
    (tmp_path / "folder.zip").mkdir()
    tifffile.imwrite(tmp_path / "stack.tif", load_fibsem()[:3], photometric="minisblack")
    tifffile.imwrite(tmp_path / "small.tif", load_pair()[0][:40, :300])
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as z:  # the user's archive, not a package
        z.writestr("image.tif", b"not a model")
    before = {p: sha256(p) for p in tmp_path.rglob("*") if p.is_file()}
    checkpoints = {p: sha256(p) for p in (EMDIFFUSE_2D, VEMDIFFUSE)}
    code, out, err = run_cli(capsys, *[a.format(tmp=tmp_path, run_3d=run_3d) for a in case])
    assert code == 2 and err.count("\n") == 1 and err.startswith("emdiffuse: error: "), err
    assert message in err, err
    assert {p: sha256(p) for p in tmp_path.rglob("*") if p.is_file()} == before
    assert {p: sha256(p) for p in checkpoints} == checkpoints


def test_missing_extra_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)  # as if the extra were not installed
    code, out, err = run_cli(capsys, "demo-denoise", "-o", tmp_path / "m.zip")
    assert code == 2 and err.count("\n") == 1 and "napari-emdiffuse[bioimageio]" in err, err
    assert not (tmp_path / "m.zip").exists()
