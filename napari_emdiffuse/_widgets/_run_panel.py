"""Restore / Cancel buttons, a progress bar counting tile-steps, and a one-line status."""
from __future__ import annotations

from magicgui.widgets import Container, Label, ProgressBar, PushButton

from ._state import RunState


class RunPanel(Container):
    def __init__(self, state: RunState):
        self.run_button = PushButton(text="Restore")
        self.cancel_button = PushButton(text="Cancel", enabled=False,
                                        tooltip="stop after the current network batch; finished slices are kept")
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(min=0, max=1, value=0, tooltip="tiles x sampler steps done")
        self.status = Label(value="")
        super().__init__(widgets=[buttons, self.progress, self.status], labels=False)
        self.margins = (0, 0, 0, 0)
        self.state = state
        for name in ("running", "cancelling", "done", "total", "status"):
            getattr(state.events, name).connect(self._update)
        self._update()

    def _update(self, *_) -> None:
        s = self.state
        self.run_button.enabled = not s.running
        self.cancel_button.enabled = s.running and not s.cancelling
        self.progress.max = max(s.total, 1)
        self.progress.value = min(s.done, max(s.total, 1))
        self.status.value = s.status
