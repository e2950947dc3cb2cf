"""load_model on every kind of source: EMDiffuse checkpoints (checked against outputs of the original
network), presets with download and sha256 check, cards, run folders and weight files."""
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napari_emdiffuse import emdiffuse_compat
from napari_emdiffuse.loading import list_presets, load_model, read_card
from napari_emdiffuse.model import build_network, model_from_card
from napari_emdiffuse.files import sha256_of
from napari_emdiffuse.training.runs import save_model

REFERENCE = Path(__file__).parent / "data" / "emdiffuse"
CHECKPOINTS = {"emdiffuse_unet2d_small": "denoise", "vemdiffuse_unet_small": "isotropic"}

TINY_CARD = {
    "name": "tiny", "task": "denoise", "description": "tiny test model",
    "network": {"kind": "unet", "in_channel": 2, "out_channel": 1, "inner_channel": 8, "channel_mults": [1, 2],
                "res_blocks": 1, "attn_res": [2], "num_head_channels": 8, "norm_groups": 4},
    "diffusion": {"parameterization": "x0", "steps": 2, "samples": 2, "sampler": "ddim"},
}


def reference_output(network, name):
    io = np.load(REFERENCE / f"{name}_io.npz")
    args = [torch.from_numpy(io["x"]), torch.from_numpy(io["gammas"])]
    if "channel_index" in io:
        args.append(torch.from_numpy(io["channel_index"]))
    with torch.no_grad():
        out = network(*args).numpy()
    return out, io["out"]


def relative_error(out, expected):
    return float(np.abs(out - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_emdiffuse_checkpoint_reproduces_original_network(name):
    model = load_model(REFERENCE / f"{name}_Network.pth")
    assert model.task == CHECKPOINTS[name]
    assert model.card["diffusion"]["parameterization"] == "eps"
    assert model.card["diffusion"]["sigma_min"] == pytest.approx(1e-3, rel=1e-3)
    assert model.card["diffusion"]["sigma_max"] == pytest.approx(151, rel=0.01)
    assert model.network.training is False
    out, expected = reference_output(model.network, name)
    assert relative_error(out, expected) < 1e-5


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("name", CHECKPOINTS)
def test_ema_checkpoint_with_other_prefix_and_no_sidecar(tmp_path, name, prefix):
    state = torch.load(REFERENCE / f"{name}_Network.pth", weights_only=True)
    renamed = {(prefix + k[len("denoise_fn."):] if k.startswith("denoise_fn.") else k): v for k, v in state.items()}
    path = tmp_path / f"best_{name}_Network_ema.pth"
    torch.save(renamed, path)
    model = load_model(path)
    assert model.task == CHECKPOINTS[name]
    out, expected = reference_output(model.network, name)
    assert relative_error(out, expected) < 1e-5


@pytest.mark.parametrize("keys_file", ["EMDiffuse-n_keys.txt", "vEMDiffuse-i_keys.txt"])
def test_unet_config_inferred_for_published_sizes(keys_file):
    text = (REFERENCE / keys_file).read_text()
    config = yaml.safe_load(re.search(r"# config: (.*)", text).group(1))
    shapes = {line.split(" ", 1)[0]: yaml.safe_load(line.split(" ", 1)[1])
              for line in text.splitlines() if line and not line.startswith("#")}
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    inferred = emdiffuse_compat.infer_unet_config(state)
    assert inferred["in_channel"] == config["in_channel"]
    assert inferred["inner_channel"] == config["inner_channel"]
    assert inferred["channel_mults"] == config["channel_mults"]
    assert inferred["res_blocks"] == config["res_blocks"]
    assert inferred["slice_embedding"] == (config["in_channel"] == 3)
    # attn_res [16] is never reached with 4 levels (rates 1..8): no attention outside the middle
    assert inferred["attn_res"] == []
    with torch.device("meta"):
        built = build_network(inferred).state_dict()
    assert {k: tuple(v.shape) for k, v in built.items()} == {k: tuple(s) for k, s in shapes.items()}


def test_superres_checkpoint_recognised_by_name_or_sidecar(tmp_path):
    shutil.copy(REFERENCE / "emdiffuse_unet2d_small_Network.pth", tmp_path / "EMDiffuse-r_best_Network.pth")
    assert load_model(tmp_path / "EMDiffuse-r_best_Network.pth").task == "superres"
    other = tmp_path / "sidecar"
    other.mkdir()
    shutil.copy(REFERENCE / "emdiffuse_unet2d_small_Network.pth", other / "best_Network.pth")
    # EMDiffuse's own experiment configs carry // comments
    (other / "config.json").write_text('{\n "name": "EMDiffuse-r", // experiment\n "task": "super_resolution"\n}\n')
    assert load_model(other / "best_Network.pth", task="superres").task == "superres"


def test_wrong_task_is_a_one_line_value_error():
    with pytest.raises(ValueError) as err:
        load_model(REFERENCE / "vemdiffuse_unet_small_Network.pth", task="denoise")
    message = str(err.value)
    assert "\n" not in message
    assert "isotropic" in message and "denoise" in message


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes_Network.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(ValueError, match="notes_Network.pth is not a readable weights file") as err:
        load_model(path)
    assert "\n" not in str(err.value)


class _CreatesFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil_Network.pth"
    path.write_bytes(pickle.dumps({"denoise_fn.cond_embed.0.weight": _CreatesFile(marker)}))
    with pytest.raises(ValueError, match="contains Python objects or code") as err:
        load_model(path)
    assert not marker.exists()
    assert "\n" not in str(err.value)


def test_checkpoint_without_network_weights(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"optimizer": {"lr": 1e-3}}, path)
    with pytest.raises(ValueError, match="holds no network weights"):
        load_model(path)
    torch.save({"linear.weight": torch.ones(2, 2)}, path)
    with pytest.raises(ValueError, match="neither an EMDiffuse checkpoint nor next to a model card"):
        load_model(path)


@pytest.fixture
def tiny_run(tmp_path):
    torch.manual_seed(0)
    model = model_from_card(TINY_CARD)
    torch.nn.init.normal_(model.network.out[-1].weight, std=0.1)
    save_model(TINY_CARD, model.network.state_dict(), tmp_path / "run")
    return model, tmp_path / "run"


def _same_network(a, b):
    x, level = torch.randn(1, 2, 16, 16), torch.tensor([0.5])
    with torch.no_grad():
        return torch.equal(a.network(x, level), b.network(x, level))


def test_run_folder_card_and_weights_file(tiny_run):
    model, run = tiny_run
    for source in (run, run / "card.yaml", run / "weights.pt"):
        loaded = load_model(source, task="denoise")
        assert loaded.name == "tiny" and _same_network(model, loaded)


def test_weights_that_do_not_fit_the_card(tiny_run):
    _, run = tiny_run
    card = yaml.safe_load((run / "card.yaml").read_text())
    card["network"]["inner_channel"] = 16
    (run / "card.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(ValueError, match="do not fit the network"):
        load_model(run)


def test_local_weights_with_wrong_sha256(tiny_run):
    _, run = tiny_run
    card = yaml.safe_load((run / "card.yaml").read_text())
    card["weights"]["sha256"] = "0" * 64
    (run / "card.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_model(run)


@pytest.fixture
def preset_env(tiny_run, tmp_path, monkeypatch):
    """A preset whose weights exist only at a file:// URL, with its own models dir and cache."""
    _, run = tiny_run
    server = tmp_path / "server"
    server.mkdir()
    shutil.copy(run / "weights.pt", server / "tiny-test.pt")
    card = dict(TINY_CARD, name="tiny-test",
                weights={"file": "tiny-test.pt", "sha256": sha256_of(run / "weights.pt"),
                         "url": (server / "tiny-test.pt").as_uri()})
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny-test.yaml").write_text(yaml.safe_dump(card))
    monkeypatch.setenv("EMDIFFUSE_MODELS_DIR", str(models))
    monkeypatch.setenv("EMDIFFUSE_CACHE", str(tmp_path / "cache"))
    return server, models, tmp_path / "cache"


def test_preset_downloads_into_cache_then_uses_it(tiny_run, preset_env):
    model, _ = tiny_run
    server, _, cache = preset_env
    assert [p["name"] for p in list_presets()] == ["tiny-test"]
    preset = list_presets()[0]
    assert (preset["task"], preset["steps"], preset["samples"], preset["sampler"]) == ("denoise", 2, 2, "ddim")
    loaded = load_model("tiny-test", task="denoise")
    assert (cache / "tiny-test.pt").is_file() and _same_network(model, loaded)
    (server / "tiny-test.pt").unlink()  # the second load must not need the URL
    assert _same_network(model, load_model("tiny-test"))
    assert [p.name for p in cache.iterdir()] == ["tiny-test.pt"]  # no partial download left


def test_weights_file_of_a_preset_finds_its_card(tiny_run, preset_env):
    model, _ = tiny_run
    server, _, _ = preset_env
    loaded = load_model(server / "tiny-test.pt")  # as weights/demo-denoise.pt finds models/demo-denoise.yaml
    assert loaded.name == "tiny-test" and _same_network(model, loaded)


def test_preset_download_with_wrong_sha256_is_discarded(preset_env):
    _, models, cache = preset_env
    card = yaml.safe_load((models / "tiny-test.yaml").read_text())
    card["weights"]["sha256"] = "f" * 64
    (models / "tiny-test.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(ValueError, match="does not match the sha256") as err:
        load_model("tiny-test")
    assert "\n" not in str(err.value)
    assert not (cache / "tiny-test.pt").exists() and not [p for p in cache.glob("*") if p.is_file()]


def test_stale_cached_weights_are_fetched_again(tiny_run, preset_env):
    model, _ = tiny_run
    _, _, cache = preset_env
    cache.mkdir()
    (cache / "tiny-test.pt").write_bytes(b"an older or damaged download")
    assert _same_network(model, load_model("tiny-test"))
    assert [p.name for p in cache.iterdir()] == ["tiny-test.pt"]


def test_unreachable_url_is_one_line(preset_env):
    server, _, cache = preset_env
    (server / "tiny-test.pt").unlink()
    with pytest.raises(ValueError, match=r"cannot download tiny-test.pt from file://.* — check the connection") as err:
        load_model("tiny-test")
    assert "\n" not in str(err.value)


@pytest.fixture
def local_http_server(preset_env):
    """The preset's server folder served over HTTP on the loopback address (no outside network)."""
    import functools
    import http.server
    import threading

    server, models, cache = preset_env
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(server))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", models, cache
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def test_preset_downloads_over_http(tiny_run, local_http_server):
    model, _ = tiny_run
    base, models, cache = local_http_server
    card = yaml.safe_load((models / "tiny-test.yaml").read_text())
    card["weights"]["url"] = f"{base}/tiny-test.pt"
    (models / "tiny-test.yaml").write_text(yaml.safe_dump(card))
    assert _same_network(model, load_model("tiny-test"))
    assert [p.name for p in cache.iterdir()] == ["tiny-test.pt"]
    card["weights"]["url"] = f"{base}/missing.pt"
    card["weights"]["file"] = "other.pt"
    (models / "tiny-test.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(ValueError, match=r"cannot download other.pt from http://127.0.0.1:\d+/missing.pt \(404") as err:
        load_model("tiny-test")
    assert "\n" not in str(err.value)


@pytest.fixture
def installed_presets(tiny_run, tmp_path, monkeypatch):
    """Presets laid out as in an installed package (models/ and weights/ under one folder)."""
    from napari_emdiffuse import loading

    _, run = tiny_run
    root = tmp_path / "site-packages" / "napari_emdiffuse" / "_presets"
    (root / "models").mkdir(parents=True)
    (root / "weights").mkdir()
    shutil.copy(run / "weights.pt", root / "weights" / "tiny-test.pt")
    card = dict(TINY_CARD, name="tiny-test", weights={"file": "tiny-test.pt", "sha256": sha256_of(run / "weights.pt")})
    (root / "models" / "tiny-test.yaml").write_text(yaml.safe_dump(card))
    monkeypatch.setattr(loading, "bundled_root", lambda: root)
    monkeypatch.delenv("EMDIFFUSE_MODELS_DIR", raising=False)
    monkeypatch.setenv("EMDIFFUSE_CACHE", str(tmp_path / "cache"))
    return root


def test_installed_preset_with_corrupt_weights_says_reinstall(installed_presets):
    weights = installed_presets / "weights" / "tiny-test.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError) as err:
        load_model("tiny-test")
    message = str(err.value)
    assert "\n" not in message and str(weights) in message
    assert "corrupt" in message and "reinstall napari-emdiffuse" in message


def test_installed_preset_with_missing_weights_says_reinstall(installed_presets):
    weights = installed_presets / "weights" / "tiny-test.pt"
    weights.unlink()
    with pytest.raises(ValueError) as err:
        load_model("tiny-test")
    message = str(err.value)
    assert "\n" not in message and str(weights) in message
    assert "is missing" in message and "reinstall napari-emdiffuse" in message


def test_checkout_weights_point_to_the_repository(monkeypatch, tmp_path):
    """In a source checkout the bundled weights are the repository's: a damaged one is restored with git."""
    from napari_emdiffuse import loading

    assert loading.bundled_root() == loading.REPO_ROOT  # these tests run from the checkout
    card = read_card(loading.models_dir() / "demo-denoise.yaml")
    card["weights"]["sha256"] = "0" * 64
    with pytest.raises(ValueError, match=r"git checkout -- weights/demo-denoise.pt"):
        loading.fetch_weights(card, loading.models_dir())


def test_unknown_preset_lists_the_known_ones(preset_env):
    with pytest.raises(ValueError, match=r"no model file or preset named 'nope' \(presets: tiny-test\)"):
        load_model("nope")
