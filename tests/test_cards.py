"""The model card schema: every real card passes unchanged; a typo, a wrong type or a missing part
is one line naming the card and the field; weights.file can never lead outside the cache."""
from __future__ import annotations

import copy
import importlib
from pathlib import Path

import pytest
import yaml

from napari_emdiffuse import loading
from napari_emdiffuse.cards import validate_card
from napari_emdiffuse.loading import fetch_weights, load_model, read_card
from napari_emdiffuse.training.presets import new_card

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
DEMO = yaml.safe_load((MODELS / "demo-denoise.yaml").read_text())


@pytest.mark.parametrize("card", sorted(MODELS.glob("*.yaml")), ids=lambda p: p.stem)
def test_bundled_cards_pass_unchanged(card):
    raw = yaml.safe_load(card.read_text())
    assert read_card(card) == raw


@pytest.mark.parametrize("card", sorted(MODELS.glob("*.yaml")), ids=lambda p: p.stem)
def test_bundled_cards_draw_no_sample_spread_their_map_does_not_read(card):
    """A second sample costs a full sampler run per tile; a card whose predicted error weighs no
    spread draws one (benchmarks/default_tradeoff.py: the same PSNR and map on val)."""
    raw = yaml.safe_load(card.read_text())
    assert "spread" in raw["uncertainty"]["predicted_error"]["weights"] or raw["diffusion"]["samples"] == 1


@pytest.mark.parametrize("script", ["train_superres", "train_isotropic"])
def test_task_preset_card_has_the_sampling_its_training_script_writes(script, monkeypatch):
    """A retrain writes the bundled card's defaults (evaluate --update-card keeps them)."""
    monkeypatch.syspath_prepend(str(REPO / "weights"))
    written = importlib.import_module(script).CARD
    bundled = yaml.safe_load((MODELS / f"{written['name']}.yaml").read_text())["diffusion"]
    assert {key: bundled[key] for key in written["diffusion"]} == written["diffusion"]


@pytest.mark.parametrize("task", ["denoise", "superres", "isotropic"])
def test_cards_that_training_writes_pass(task):
    card = new_card(task, "small")
    card["training"] = {"data": {"kind": task}, "config": {"steps": 10, "lr": 1e-4}, "fine_tuned_from": "x"}
    card["source"] = {"format": "emdiffuse", "file": "/somewhere/best_Network.pth"}
    card["weights"] = {"file": "weights.pt", "sha256": "a" * 64}
    card["isotropic" if task == "isotropic" else "superres"] = (
        {"z_factor": 5, "route": "anisotropic", "slice_index": "0-based"} if task == "isotropic"
        else {"scale": 2, "degradation": "2x2 mean binning"})
    assert validate_card(copy.deepcopy(card), "card.yaml") == card


def test_values_arrive_in_their_types():
    card = copy.deepcopy(DEMO)
    card["diffusion"]["sigma_min"] = "2e-3"  # YAML 1.1 reads an exponent without a dot as a string
    card["diffusion"]["steps"] = 4.0
    checked = validate_card(card, "x.yaml")
    assert checked["diffusion"]["sigma_min"] == 0.002 and isinstance(checked["diffusion"]["steps"], int)
    assert "rho" not in checked["diffusion"]  # defaults are the engine's business, not added to the card


def _problem(change) -> str:
    card = copy.deepcopy(DEMO)
    change(card)
    with pytest.raises(ValueError) as err:
        validate_card(card, "cards/my-model.yaml")
    message = str(err.value)
    assert "\n" not in message and message.startswith("model card cards/my-model.yaml: ")
    assert message.endswith("— fix the card")
    return message


@pytest.mark.parametrize("change, expected", [
    # unknown keys, top level and inside a section, with the likely intended one
    (lambda c: c.update(weight=c.pop("weights")), "unknown key weight (did you mean weights?)"),
    (lambda c: c["network"].update(inner_chanel=16), "unknown key network.inner_chanel (did you mean network.inner_channel?)"),
    (lambda c: c["uncertainty"].update(thresold=0.1), "unknown key uncertainty.thresold (did you mean uncertainty.threshold?)"),
    (lambda c: c["tile"].update(colour=1), "unknown key tile.colour (known: size, overlap)"),
    # wrong types and values
    (lambda c: c["diffusion"].update(steps="four"), "diffusion.steps: input should be a valid integer"),
    (lambda c: c["diffusion"].update(steps=0), "diffusion.steps: input should be greater than or equal to 1"),
    (lambda c: c["diffusion"].update(steps=None), "diffusion.steps: input should be a valid integer (got None)"),
    (lambda c: c["diffusion"].pop("sigma_max") and c["diffusion"].update(sigma_min=90.0),
     "diffusion: sigma_min (90.0) must be below sigma_max (80.0)"),  # the engine's default sigma_max
    (lambda c: c["network"].update(aleatoric="maybe"), "network.aleatoric: input should be a valid boolean"),
    (lambda c: c["network"].update(channel_mults=4), "network.channel_mults: input should be a valid list"),
    (lambda c: c.update(tile=[256, 24]), "tile must be a section of key: value lines"),
    (lambda c: c["diffusion"].update(sampler="dpmpp2m"), "diffusion.sampler: unknown sampler 'dpmpp2m'"),
    (lambda c: c["diffusion"].update(clip=[1.5]), "diffusion.clip: list should have at least 2 items"),
    (lambda c: c["diffusion"].update(sigma_min=100.0), "diffusion: sigma_min (100.0) must be below sigma_max"),
    (lambda c: c.update(task="deblur"), "task: unknown task 'deblur': use one of denoise, superres, isotropic"),
    (lambda c: c["normalization"].update(low=99, high=1), "normalization: the low percentile"),
    (lambda c: c["weights"].update(sha256="abc"), "weights.sha256: must be 64 lowercase hexadecimal digits"),
    (lambda c: c["weights"].update(url="gopher://host/w.pt"), "weights.url: must be an https, http, ftp, sftp or file URL"),
    # missing parts
    (lambda c: c.pop("name"), "name is missing"),
    (lambda c: c["weights"].pop("file"), "weights.file is missing"),
    (lambda c: c["weights"].update(url="https://example.org/w.pt", sha256=None), "weights: a url needs the weights' sha256"),
])
def test_a_bad_field_is_named(change, expected):
    assert expected in _problem(change)


def test_several_problems_are_counted():
    def change(card):
        card["network"]["dims"] = 5
        card["tile"]["size"] = -1
        card["bogus"] = 1
    assert "(and 2 more problems)" in _problem(change)


@pytest.mark.parametrize("name", ["../elsewhere/x.pth", "sub/x.pt", "/tmp/x.pt", "C:\\x.pt", "C:x.pt",
                                  "..", "x\\..\\..\\y.pt", " x.pt", ""])
def test_weights_file_must_be_a_bare_name(name):
    message = _problem(lambda c: c["weights"].update(file=name))
    assert "weights.file" in message and ("bare file name" in message or "at least 1 character" in message)


def test_card_cannot_write_outside_the_cache(tmp_path, monkeypatch):
    """A card with its own URL and the right sha256 and a file that climbs out of the cache:
    refused before anything is fetched or written."""
    server = tmp_path / "server"
    server.mkdir()
    weights = server / "x.pth"
    weights.write_bytes(b"weights")
    from napari_emdiffuse.training.runs import sha256_of

    card = copy.deepcopy(DEMO)
    card["weights"] = {"file": "../elsewhere/x.pth", "sha256": sha256_of(weights), "url": weights.as_uri()}
    path = tmp_path / "models" / "evil.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(card))
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMDIFFUSE_CACHE", str(cache))
    fetched = []
    monkeypatch.setattr(loading.pooch, "retrieve", lambda *a, **k: fetched.append(a))

    for attempt in (lambda: load_model(path), lambda: fetch_weights(card, path.parent)):
        with pytest.raises(ValueError, match=r"weights.file: must be a bare file name") as err:
            attempt()
        assert "\n" not in str(err.value)
    assert fetched == [] and not cache.exists() and not (tmp_path / "elsewhere").exists()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "models", "models/evil.yaml", "server", "server/x.pth"]


def test_a_broken_preset_card_is_named_by_emdiffuse_models(tmp_path, monkeypatch, capsys):
    from napari_emdiffuse.cli import main

    card = copy.deepcopy(DEMO)
    card["diffusion"]["stpes"] = 4
    (tmp_path / "demo-denoise.yaml").write_text(yaml.safe_dump(card))
    monkeypatch.setenv("EMDIFFUSE_MODELS_DIR", str(tmp_path))
    assert main(["models"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "demo-denoise.yaml" in err
    assert "unknown key diffusion.stpes (did you mean diffusion.steps?)" in err
