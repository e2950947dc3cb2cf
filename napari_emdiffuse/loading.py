"""Find and load restoration models: bundled presets, model cards, run folders, weight files and
EMDiffuse checkpoints, all through :func:`load_model`.

Every card is checked against the schema of :mod:`napari_emdiffuse.cards` when it is read.
Weights are only ever read with ``torch.load(weights_only=True)``, and a card's sha256 is checked
before its weights are used.

The bundled presets (the repository's ``models/*.yaml`` and ``weights/*.pt``) travel inside a
built package as ``napari_emdiffuse/_presets/{models,weights}/`` (setup.py copies them); a source
checkout or an editable install reads the repository's own folders.
"""
from __future__ import annotations

import importlib.resources
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import pooch
import torch
import yaml

from . import emdiffuse_compat
from .cards import bare_file_name, validate_card
from .device import resolve_device
from .files import sha256_of
from .model import RestorationModel, model_from_card
from .run_folder import CARD_NAME, is_run_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGED_PRESETS = "_presets"  # the folder of the package that setup.py fills (see setup.py)
WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt")
CARD_SUFFIXES = (".yaml", ".yml")
REINSTALL = "reinstall napari-emdiffuse (pip install --force-reinstall napari-emdiffuse)"


def bundled_root() -> Path:
    """The folder that holds the bundled ``models/`` and ``weights/``: inside the installed
    package, or the root of a source checkout (editable install)."""
    packaged = importlib.resources.files(__package__) / PACKAGED_PRESETS
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    if (REPO_ROOT / "setup.cfg").is_file() and (REPO_ROOT / "models").is_dir():
        return REPO_ROOT
    return Path(str(packaged))  # a broken install: where the presets should be


def models_dir() -> Path:
    return Path(os.environ.get("EMDIFFUSE_MODELS_DIR") or bundled_root() / "models")


def weights_dir() -> Path:
    return bundled_root() / "weights"


def cache_dir() -> Path:
    """Where downloaded weights go: ``EMDIFFUSE_CACHE``, or the user cache folder of this OS."""
    return Path(os.environ.get("EMDIFFUSE_CACHE") or pooch.os_cache("napari-emdiffuse"))


def _restore_hint(root: Path, name: str) -> str:
    if root == REPO_ROOT:
        return f"restore it from the repository (git checkout -- weights/{name})"
    return REINSTALL


def read_card(path: str | Path) -> dict:
    """A model card, checked against the schema (a one-line ValueError names the bad field)."""
    path = Path(path)
    try:
        card = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read the model card {path.name} ({_first_line(e)}) — "
                         "check that it is a YAML model card") from None
    if not isinstance(card, dict) or "network" not in card or "task" not in card:
        raise ValueError(f"{path.name} is not a model card (it needs name, task and network) — "
                         "pass a model card, a run folder or a weights file")
    return validate_card(card, str(path))


def _preset_cards() -> dict[str, Path]:
    folder = models_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in CARD_SUFFIXES}


def list_presets() -> list[dict]:
    """The bundled model cards: name, task, description, default sampler/steps/samples, card path."""
    presets = []
    for name, path in _preset_cards().items():
        card = read_card(path)
        model = RestorationModel(card=card, network=torch.nn.Identity())
        d = model.diffusion
        presets.append({"name": card.get("name", name), "task": card["task"],
                        "description": card.get("description", ""), "sampler": d["sampler"],
                        "steps": d["steps"], "samples": d["samples"], "card": path})
    return presets


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def read_state(path: str | Path) -> dict:
    """A checkpoint's contents, read safely (tensors and plain containers only)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch reports unsafe pickles, zip errors, truncation... all alike
        reason = _first_line(e)
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it contains Python objects or code, which are never loaded"
        raise ValueError(f"{path.name} is not a readable weights file: {reason} — "
                         "pass a *_Network.pth / *_Network_ema.pth checkpoint or a run folder") from None
    if isinstance(state, dict) and not any(torch.is_tensor(v) for v in state.values()):
        wrapped = [state[k] for k in ("state_dict", "model", "network") if isinstance(state.get(k), dict)]
        state = wrapped[0] if wrapped else state
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path.name} holds no network weights — "
                         "pass a *_Network.pth / *_Network_ema.pth checkpoint or a run folder")
    return state


def _verify(path: Path, expected: str | None, remedy: str) -> Path:
    if expected and sha256_of(path) != expected:
        raise ValueError(f"{path} does not match the sha256 in its model card (a corrupt or wrong file) — {remedy}")
    return path


def _copy_file_url(url: str, output_file, pooch_instance=None) -> None:
    """A pooch downloader for ``file://`` URLs (weights kept on a shared drive)."""
    source = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
    with open(source, "rb") as src:
        if hasattr(output_file, "write"):
            shutil.copyfileobj(src, output_file)
        else:
            with open(output_file, "wb") as out:
                shutil.copyfileobj(src, out)


def _download(url: str, name: str, expected: str | None) -> Path:
    """The file at ``url`` in the cache as ``name``, its sha256 checked (pooch keeps a cached
    copy whose hash matches, and fetches it again when it does not)."""
    if not expected:
        raise ValueError(f"the model card gives a download URL but no sha256 for {name} — "
                         "add the weights' sha256 to the card")
    downloader = _copy_file_url if url.lower().startswith("file:") else None
    try:
        return Path(pooch.retrieve(url, known_hash=f"sha256:{expected}", fname=name, path=cache_dir(),
                                   downloader=downloader, progressbar=False))
    except ValueError as e:
        if "hash" not in str(e):
            raise ValueError(f"cannot download {name} from {url} ({_first_line(e)}) — fix the card's url") from None
        raise ValueError(f"the file downloaded from {url} does not match the sha256 in its model card — "
                         "the URL serves other weights: fix the card or fetch the file by hand") from None
    except Exception as e:  # requests' connection errors, HTTP errors, a missing local file...
        raise ValueError(f"cannot download {name} from {url} ({_first_line(e)}) — "
                         f"check the connection, or put the file in {cache_dir()}") from None


def fetch_weights(card: dict, card_dir: Path | None = None) -> Path:
    """The card's weight file, found next to the card, among the bundled weights, in the cache,
    or downloaded into the cache from the card's ``url``; its sha256 is checked in every case.
    ``weights.file`` must be a bare file name: nothing is read or written before that holds."""
    label = card.get("name", "?")
    spec = card.get("weights") or {}
    if not spec.get("file"):
        raise ValueError(f"model card {label!r} names no weights file — "
                         "add weights: {file: ..., sha256: ...} to the card")
    try:
        name = bare_file_name(spec["file"])
    except ValueError as e:
        raise ValueError(f"model card {label!r}: weights.file: {e} — fix the card") from None
    expected, url = spec.get("sha256"), spec.get("url")
    root = bundled_root()
    if card_dir is not None and (Path(card_dir) / name).is_file():
        return _verify(Path(card_dir) / name, expected, "fix the card, or put the right weights file beside it")
    if (weights_dir() / name).is_file():
        return _verify(weights_dir() / name, expected, _restore_hint(root, name))
    if url:
        return _download(url, name, expected)
    if (cache_dir() / name).is_file():
        return _verify(cache_dir() / name, expected, "delete it, and put the right file there")
    if card_dir is not None and Path(card_dir).resolve() == (root / "models").resolve():
        raise ValueError(f"the bundled weights file {weights_dir() / name} of preset {label!r} is missing — "
                         f"{_restore_hint(root, name)}")
    places = ([card_dir] if card_dir else []) + [weights_dir(), cache_dir()]
    raise ValueError(f"weights {name} of model {label!r} are not in "
                     f"{', '.join(str(p) for p in places)} and the card gives no url — "
                     "train or download them first")


def _model_from_card_file(card_path: Path) -> RestorationModel:
    card = read_card(card_path)
    weights = fetch_weights(card, card_path.parent)
    return _build(card, read_state(weights), f"{card_path}")


def _build(card: dict, state: dict, source: str) -> RestorationModel:
    try:
        return model_from_card(card, state, source=source)
    except RuntimeError as e:  # load_state_dict's missing/unexpected keys, shape mismatches
        raise ValueError(f"the weights do not fit the network of model {card.get('name', '?')!r} "
                         f"({' '.join(str(e).split())[:300]}) — check that card and weights belong together") from None


def _card_for_weights(weights: Path) -> Path | None:
    """A card describing these weights: ``<stem>.yaml``, a run folder's ``card.yaml``, or the
    bundled preset that names this file (``weights/demo-denoise.pt`` -> ``models/demo-denoise.yaml``)."""
    nearby = [weights.with_suffix(".yaml"), weights.with_suffix(".yml"), weights.parent / CARD_NAME]
    for candidate in [p for p in nearby if p.is_file()]:  # a card next to the file may leave weights out
        if (read_card(candidate).get("weights") or {}).get("file", weights.name) == weights.name:
            return candidate
    for candidate in _preset_cards().values():
        if (read_card(candidate).get("weights") or {}).get("file") == weights.name:
            return candidate
    return None


def _model_from_weights(path: Path) -> RestorationModel:
    card_path = _card_for_weights(path)
    state = read_state(path)
    if card_path is not None:
        card = read_card(card_path)
        _verify(path, (card.get("weights") or {}).get("sha256"), "check that the card and the weights belong together")
        return _build(card, state, str(path))
    if emdiffuse_compat.is_emdiffuse_state(state):
        card, sd = emdiffuse_compat.card_for_checkpoint(path, state)
        return _build(card, sd, str(path))
    raise ValueError(f"{path.name} is neither an EMDiffuse checkpoint nor next to a model card — "
                     "pass the run folder or the model card that goes with it")


def load_model(name_or_path: str | os.PathLike, task: str | None = None,
               device: str | torch.device = "cpu") -> RestorationModel:
    """A bundled preset name, a model card (.yaml), a run folder, our own weights next to a card,
    or an EMDiffuse ``*_Network.pth`` / ``*_Network_ema.pth``; checked against ``task`` if given."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    presets = _preset_cards()
    if path.is_dir():
        if not is_run_folder(path):
            raise ValueError(f"{path} is a folder without a {CARD_NAME} — pass a run folder, "
                             "a model card or a weights file")
        model = _model_from_card_file(path / CARD_NAME)
    elif path.is_file() and path.suffix.lower() in CARD_SUFFIXES:
        model = _model_from_card_file(path)
    elif path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES:
        model = _model_from_weights(path)
    elif path.is_file():
        raise ValueError(f"{path.name} is not a model (not a .yaml card, .pt/.pth weights or a run folder) — "
                         "pass one of those or a preset name")
    elif text in presets:
        model = _model_from_card_file(presets[text])
    else:
        known = ", ".join(presets) or f"none in {models_dir()}"
        if not presets and not os.environ.get("EMDIFFUSE_MODELS_DIR"):
            known += f"; {REINSTALL}"  # an installed package always carries its presets
        raise ValueError(f"no model file or preset named {text!r} (presets: {known}) — "
                         "pass a preset name, a model card, a run folder or a checkpoint")
    if task is not None and model.task != task:  # named by what the user passed, which may be a path
        article = "an" if model.task[0] in "aeiou" else "a"
        raise ValueError(f"{path.name if path.exists() else text} is {article} {model.task} model, not a {task} model — "
                         f"choose a {task} model (`emdiffuse models` lists the bundled ones)")
    return model.to(resolve_device(device))


__all__ = ["load_model", "list_presets", "read_card", "read_state", "fetch_weights", "models_dir",
           "weights_dir", "cache_dir", "bundled_root"]
