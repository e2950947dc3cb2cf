"""What this machine and installation offer (devices, presets, samplers), found off the GUI thread
because it imports torch."""
from __future__ import annotations

from dataclasses import dataclass, field

from ._state import MODEL_DEFAULT


@dataclass(frozen=True)
class Environment:
    devices: tuple[str, ...] = ("auto", "cpu")
    presets: tuple[dict, ...] = ()  # loading.list_presets() entries
    samplers: tuple[str, ...] = (MODEL_DEFAULT,)
    ready: bool = False
    problems: tuple[str, ...] = field(default=())

    def preset_names(self, task: str) -> list[str]:
        return [p["name"] for p in self.presets if p["task"] == task]


def warm_imports() -> None:
    """Import now, off the GUI thread, what showing the first results would otherwise import on
    it (the restore core; pandas, which napari's Labels layer uses for its features table)."""
    import pandas  # noqa: F401

    from .. import api  # noqa: F401


def probe() -> Environment:
    """Import torch and list devices, bundled presets and samplers (slow: run it in a worker)."""
    warm_imports()
    from ..device import available_devices
    from ..diffusion.samplers import SAMPLERS

    problems = []
    try:
        from ..loading import list_presets

        presets = tuple(list_presets())
    except ValueError as e:  # an unreadable card should not hide the other choices
        presets, problems = (), [str(e)]
    return Environment(tuple(available_devices()), presets, (MODEL_DEFAULT, *SAMPLERS), True, tuple(problems))
