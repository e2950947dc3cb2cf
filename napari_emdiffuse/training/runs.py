"""Run folders: a model card and weights any loader takes, plus the training state.

Every file is written to a temporary name and renamed into place, so a kill during a save
leaves the previous checkpoint intact; the card names its weights by hash, so new weights go
in under a second name first (see :func:`save_model`) and the card never names missing or
half-replaced weights.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import yaml

CARD_NAME, WEIGHTS_NAME, STATE_NAME = "card.yaml", "weights.pt", "state.pt"
NEXT_WEIGHTS_NAME = "weights.next.pt"  # the second slot used while weights.pt is replaced


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
        umask = os.umask(0)  # mkstemp makes the file private; the result gets what the umask allows
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_torch(obj, path: Path) -> None:
    import torch  # lazily: the widgets ask about run folders without loading torch

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


def has_state(folder: str | os.PathLike) -> bool:
    """A run that can be resumed (holds the training state, not just a model)."""
    return (Path(folder) / STATE_NAME).is_file()


def is_run_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / CARD_NAME).is_file()
