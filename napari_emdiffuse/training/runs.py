"""Run folders: a model card and weights any loader takes, plus the training state.

Every file is written to a temporary name and renamed into place, so a kill during a save
leaves the previous checkpoint intact; the card names its weights by hash, so new weights go
in under a second name first (see :func:`save_model`) and the card never names missing or
half-replaced weights.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import yaml

from ..files import atomic_write, sha256_of
from ..run_folder import CARD_NAME, NEXT_WEIGHTS_NAME, STATE_NAME, WEIGHTS_NAME, has_state, is_run_folder


def save_torch(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_card(card: dict, path: Path) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            yaml.safe_dump(card, f, sort_keys=False)
    atomic_write(path, write)


def _card_naming(card: dict, weights_name: str, sha256: str) -> dict:
    return {**card, "weights": {"file": weights_name, "sha256": sha256}}


def _link_or_copy(source: Path, destination: Path) -> None:
    """Put ``source``'s bytes at ``destination`` atomically (a hard link where the disk allows)."""
    def write(tmp):
        os.remove(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    atomic_write(destination, write)


def save_model(card: dict, state_dict: dict, folder: Path) -> None:
    """Save weights and the card naming their hash, so that at every instant the card names
    complete weights with that hash: new weights go to a second file, the card switches to it,
    weights.pt becomes a copy of it, the card switches back, and the second file goes."""
    folder = Path(folder)
    save_torch(state_dict, folder / NEXT_WEIGHTS_NAME)
    sha = sha256_of(folder / NEXT_WEIGHTS_NAME)
    save_card(_card_naming(card, NEXT_WEIGHTS_NAME, sha), folder / CARD_NAME)
    _link_or_copy(folder / NEXT_WEIGHTS_NAME, folder / WEIGHTS_NAME)
    save_card(_card_naming(card, WEIGHTS_NAME, sha), folder / CARD_NAME)
    os.remove(folder / NEXT_WEIGHTS_NAME)


def remove_partial_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files a killed save left behind (never the card, weights or state)."""
    names = (CARD_NAME, WEIGHTS_NAME, NEXT_WEIGHTS_NAME, STATE_NAME)
    leftovers = [p for p in Path(folder).glob(".*.tmp") if any(p.name.startswith(f".{n}.") for n in names)]
    for p in leftovers:
        p.unlink(missing_ok=True)
    return leftovers


__all__ = ["CARD_NAME", "WEIGHTS_NAME", "STATE_NAME", "has_state", "is_run_folder", "save_card", "save_model",
           "save_torch", "remove_partial_writes"]
