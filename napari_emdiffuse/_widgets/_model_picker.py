"""Model choice: a bundled preset, a checkpoint file (ours or EMDiffuse .pth) or a training run folder."""
from __future__ import annotations

import contextlib
from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit

from ._state import RestoreSettings

FILE, FOLDER = "checkpoint file…", "training run folder…"
CHECKPOINT_FILTER = "Models (*.pth *.pt *.ckpt *.yaml *.yml)"


class ModelPicker(Container):
    """Writes the choice to ``settings.model`` (a preset name or a path) and shows it back."""

    def __init__(self, settings: RestoreSettings):
        self.presets: list[str] = []
        # choices from a callable: napari re-reads every dock widget's choices when layers change
        self.choice = ComboBox(label="model", choices=self._choices,
                               tooltip="a bundled preset, a checkpoint (.pth from EMDiffuse, .pt or a "
                                       "model card .yaml) or the folder of a training run")
        self.path = FileEdit(label="path", mode="r", filter=CHECKPOINT_FILTER, visible=False)
        super().__init__(widgets=[self.choice, self.path], labels=True)
        self.margins = (0, 0, 0, 0)
        self.settings = settings
        self._updating = False
        self.choice.changed.connect(self._choice_changed)
        self.path.changed.connect(self._path_changed)
        settings.events.model.connect(self._show)
        self._show(settings.model)

    def set_presets(self, names: list[str]) -> None:
        """The presets for the chosen task; a preset stays chosen if it is still offered."""
        current = self.settings.model
        self.presets = list(names)
        with self._quiet():
            self.choice.reset_choices()
        if current in self.presets or not current:
            self.settings.model = current or (self.presets[0] if self.presets else "")
        self._show(self.settings.model)

    def _choices(self, _widget=None) -> list[str]:
        return [*self.presets, FILE, FOLDER]

    def _choice_changed(self, choice: str) -> None:
        if self._updating:
            return
        if choice in (FILE, FOLDER):
            self.path.mode = "r" if choice == FILE else "d"
            self.path.visible = True
            self.settings.model = self._path_text()
        else:
            self.path.visible = False
            self.settings.model = choice

    def _path_changed(self, _value) -> None:
        if not self._updating and self.choice.value in (FILE, FOLDER):
            self.settings.model = self._path_text()

    def _path_text(self) -> str:
        value = self.path.value
        return "" if value is None or str(value) in ("", ".") else str(value)

    def _show(self, model: str) -> None:
        """Show a model set from elsewhere (a test, a script, the training widget)."""
        with self._quiet():
            if model in self.presets:
                self.choice.value = model
                self.path.visible = False
                return
            folder = bool(model) and Path(model).expanduser().is_dir()
            self.choice.value = FOLDER if folder else FILE
            self.path.mode = "d" if folder else "r"
            self.path.visible = True
            if model and model != self._path_text():
                self.path.value = model

    @contextlib.contextmanager
    def _quiet(self):
        """Change the widgets without writing back to the settings."""
        self._updating = True
        try:
            yield
        finally:
            self._updating = False
