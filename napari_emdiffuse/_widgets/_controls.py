"""Small controls the widgets share."""
from __future__ import annotations

from magicgui.widgets import Label, SpinBox

from ._state import MODEL_DEFAULT


def heading(text: str) -> Label:
    return Label(value=f"<b>{text}</b>")  # Qt shows markup as rich text


def default_spin(label: str, maximum: int, tooltip: str, step: int = 1) -> SpinBox:
    """A spin box where 0 stands for (and shows) the model card's value."""
    spin = SpinBox(label=label, min=0, max=maximum, step=step, tooltip=f"{tooltip} (0: the model's default)")
    spin.native.setSpecialValueText(MODEL_DEFAULT)
    return spin
