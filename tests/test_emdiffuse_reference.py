"""Our UNet against EMDiffuse's own network (reference files in tests/data/emdiffuse/)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_emdiffuse.nn import UNet

DATA = Path(__file__).parent / "data" / "emdiffuse"
PREFIX = "denoise_fn."


def _config(name: str) -> dict:
    return json.loads((DATA / f"{name}_config.json").read_text())


@pytest.mark.parametrize("name", ["emdiffuse_unet2d_small", "vemdiffuse_unet_small"])
def test_unet_reproduces_emdiffuse_network(name):
    config = _config(name)
    vem = config["kind"] == "vem"
    checkpoint = torch.load(DATA / f"{name}_Network.pth", map_location="cpu", weights_only=True)
    state = {k[len(PREFIX):]: v for k, v in checkpoint.items() if k.startswith(PREFIX)}
    # Everything else in the file is the diffusion's schedule, which the network does not own.
    assert {k for k in checkpoint if not k.startswith(PREFIX)} >= {"gammas", "posterior_mean_coef1"}

    net = UNet(**config["unet"], slice_embedding=vem)
    net.load_state_dict(state, strict=True)
    net.eval()  # the reference output has dropout off

    io = np.load(DATA / f"{name}_io.npz")
    args = [torch.from_numpy(io["x"]), torch.from_numpy(io["gammas"])]
    if vem:
        args.append(torch.from_numpy(io["channel_index"]))
    with torch.no_grad():
        out = net(*args)
    expected = torch.from_numpy(io["out"])
    assert out.shape == expected.shape
    rel = float((out - expected).abs().max() / expected.abs().max())
    assert rel < 1e-5, f"max deviation {rel:.1e} of the output range"


def _read_keys(path: Path) -> tuple[dict, int, dict[str, list[int]]]:
    config, params, keys = None, None, {}
    for line in path.read_text().splitlines():
        if line.startswith("# config:"):
            config = json.loads(line.split(":", 1)[1])
        elif line.startswith("# parameters:"):
            params = int(line.split(":", 1)[1])
        elif line.strip() and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            keys[key] = json.loads(shape)
    return config, params, keys


@pytest.mark.parametrize("name, slice_embedding, n_params", [
    ("EMDiffuse-n", False, 15_677_345),
    ("vEMDiffuse-i", True, 16_615_873),
])
def test_published_size_networks_have_emdiffuse_keys(name, slice_embedding, n_params):
    config, params, keys = _read_keys(DATA / f"{name}_keys.txt")
    assert params == n_params
    with torch.device("meta"):  # shapes only: no 16 M-parameter initialisation
        net = UNet(**config, slice_embedding=slice_embedding)
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert sorted(ours) == sorted(keys)
    assert ours == keys
    assert sum(p.numel() for p in net.parameters()) == n_params
