"""Build step that carries the bundled presets into the package (everything else is in setup.cfg).

The repository keeps the presets at the top level, beside the scripts that trained them:
``models/*.yaml`` (model cards) and ``weights/*.pt`` (their weights). A built package (wheel, or
an install from the sdist, which MANIFEST.in gives both folders) holds copies of them as
``napari_emdiffuse/_presets/models/`` and ``napari_emdiffuse/_presets/weights/``, where
``napari_emdiffuse.loading`` finds them through importlib.resources. An editable install copies
nothing: it reads the repository's folders in place. The training scripts and their data
(``weights/*.py``, ``weights/data/``) stay out of the package.
"""
from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PRESET_FILES = {"models": "*.yaml", "weights": "*.pt"}  # repository folder -> what of it travels
TARGET = os.path.join("napari_emdiffuse", "_presets")  # keep in step with loading.PACKAGED_PRESETS


class BuildWithPresets(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return
        copies = self._preset_copies()
        for folder in PRESET_FILES:
            if not any(os.path.basename(os.path.dirname(dst)) == folder for _, dst in copies):
                raise SystemExit(f"error: no {folder}/{PRESET_FILES[folder]} in {ROOT} — build from the "
                                 "repository or its sdist, which carry the bundled presets")
        for src, dst in copies:
            self.mkpath(os.path.dirname(dst))
            self.copy_file(src, dst)

    def _preset_copies(self) -> list[tuple[str, str]]:
        return [(str(path), os.path.join(self.build_lib, TARGET, folder, path.name))
                for folder, pattern in PRESET_FILES.items() for path in sorted((ROOT / folder).glob(pattern))]

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else outputs + [dst for _, dst in self._preset_copies()]


setup(cmdclass={"build_py": BuildWithPresets})
