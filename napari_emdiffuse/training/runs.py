"""Run folders: a model card and weights any loader takes, plus the training state.

Every file is written to a temporary name and renamed into place, so a kill during a save
leaves the previous checkpoint intact.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
import yaml

CARD_NAME, WEIGHTS_NAME, STATE_NAME = "card.yaml", "weights.pt", "state.pt"


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_torch(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_card(card: dict, path: Path) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            yaml.safe_dump(card, f, sort_keys=False)
    atomic_write(path, write)


def save_model(card: dict, state_dict: dict, folder: Path) -> None:
    """Weights first, then the card naming their hash: a card always points at complete weights."""
    folder = Path(folder)
    save_torch(state_dict, folder / WEIGHTS_NAME)
    card = dict(card)
    card["weights"] = {"file": WEIGHTS_NAME, "sha256": sha256_of(folder / WEIGHTS_NAME)}
    save_card(card, folder / CARD_NAME)


def is_run_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / CARD_NAME).is_file()
