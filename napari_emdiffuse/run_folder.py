"""What a training run folder holds: a model card and weights that every loader takes, plus the
training state that resumes it. The ground floor both :mod:`.loading` and :mod:`.training` read."""
from __future__ import annotations

import os
from pathlib import Path

CARD_NAME, WEIGHTS_NAME, STATE_NAME = "card.yaml", "weights.pt", "state.pt"
NEXT_WEIGHTS_NAME = "weights.next.pt"  # the second slot used while weights.pt is replaced


def is_run_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / CARD_NAME).is_file()


def has_state(folder: str | os.PathLike) -> bool:
    """A run that can be resumed (holds the training state, not just a model)."""
    return (Path(folder) / STATE_NAME).is_file()
