"""Where an image's voxels lie in physical space: :class:`Calibration` (voxel size, unit and
origin per axis) and the spellings of length units in the formats the package reads and writes.

Units travel as UDUNITS-2 names ("nanometer", "micrometer", ...), the names OME-Zarr uses; TIFF
metadata spells them as ImageJ ("nm", "um") or OME-TIFF ("nm", "µm") do. An axis without a unit
(a file that says nothing, or "pixel") has unit None and stays without one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

# UDUNITS-2 name -> its symbol (ImageJ's and OME-TIFF's spelling; ImageJ reads "um" as µm).
_SYMBOLS = {
    "angstrom": "Å", "picometer": "pm", "nanometer": "nm", "micrometer": "um", "millimeter": "mm",
    "centimeter": "cm", "meter": "m", "inch": "in",
}
_METRES = {"angstrom": 1e-10, "picometer": 1e-12, "nanometer": 1e-9, "micrometer": 1e-6, "millimeter": 1e-3,
           "centimeter": 1e-2, "meter": 1.0, "inch": 0.0254}
_SPELLINGS = {  # every spelling found in TIFF and zarr metadata -> UDUNITS name (compared lower-case)
    **{name: name for name in _SYMBOLS}, **{name + "s": name for name in _SYMBOLS if name != "inch"},
    **{symbol.lower(): name for name, symbol in _SYMBOLS.items()},
    "a": "angstrom", "\\u00c5": "angstrom", "µm": "micrometer", "μm": "micrometer", "\\u00b5m": "micrometer",
    "micron": "micrometer", "microns": "micrometer", "micrometre": "micrometer", "nanometre": "nanometer",
    "millimetre": "millimeter", "centimetre": "centimeter", "metre": "meter", "inches": "inch",
}
_UNITLESS = {"", "pixel", "pixels", "px", "none"}


def space_unit(text) -> str | None:
    """The UDUNITS name of a length unit as any format spells it ("nm", "micron", "µm",
    "nanometer", ...); None for no unit ("pixel", "", None) or one this package does not know."""
    if text is None:
        return None
    low = str(text).strip().lower()
    return None if low in _UNITLESS else _SPELLINGS.get(low)


def convert(value: float, unit: str | None, to: str | None) -> float | None:
    """``value`` in ``unit`` expressed in ``to``; None when one of them has no unit and the
    other has (there is no conversion)."""
    if unit == to:
        return float(value)
    if unit is None or to is None:
        return None
    return float(value) * _METRES[unit] / _METRES[to]


def unit_symbol(unit: str | None, style: str = "imagej") -> str | None:
    """A UDUNITS name as ImageJ ("um") or OME-TIFF ("µm") spells it."""
    if unit is None:
        return None
    symbol = _SYMBOLS[unit]
    if style == "ome" and unit == "micrometer":
        return "µm"
    if style == "imagej" and unit in ("angstrom", "inch"):
        return unit  # ImageJ's own spelling (its descriptions are ASCII)
    return symbol


@dataclass(frozen=True)
class Calibration:
    """Voxel size, unit (UDUNITS name or None) and translation (the first voxel's centre) per
    axis, in the array's axis order ((y, x) or (z, y, x))."""

    voxel_size: tuple[float, ...]
    units: tuple[str | None, ...]
    translation: tuple[float, ...]

    @classmethod
    def of(cls, voxel_size: Sequence[float], units=None, translation: Sequence[float] | None = None) -> "Calibration":
        """From a voxel size, units (one for every axis, one per axis, or None) in any spelling,
        and a translation (default: the origin)."""
        voxel = tuple(float(v) for v in voxel_size)
        if units is None or isinstance(units, str):
            units = [units] * len(voxel)
        units = tuple(space_unit(u) for u in units)
        translation = (0.0,) * len(voxel) if translation is None else tuple(float(t) for t in translation)
        if not (len(units) == len(translation) == len(voxel)):
            raise ValueError(f"voxel size {voxel}, units {units} and translation {translation} differ in length")
        return cls(voxel, units, translation)

    @classmethod
    def pixels(cls, ndim: int) -> "Calibration":
        """No physical calibration: one unit-less pixel per voxel, at the origin."""
        return cls((1.0,) * ndim, (None,) * ndim, (0.0,) * ndim)

    @property
    def ndim(self) -> int:
        return len(self.voxel_size)

    @property
    def has_units(self) -> bool:
        return any(u is not None for u in self.units)

    @property
    def is_pixels(self) -> bool:
        """Says nothing a plain array does not: unit voxels without units, at the origin."""
        return self == Calibration.pixels(self.ndim)

    def last(self, ndim: int) -> "Calibration":
        """The calibration of the last ``ndim`` axes (a plane of a stack: (y, x))."""
        return Calibration(self.voxel_size[-ndim:], self.units[-ndim:], self.translation[-ndim:])

    def fit(self, ndim: int) -> "Calibration":
        """This calibration for an array of ``ndim`` axes: the last ones, or unit-less leading
        axes added in front."""
        if ndim <= self.ndim:
            return self.last(ndim)
        extra = ndim - self.ndim
        return Calibration((1.0,) * extra + self.voxel_size, (None,) * extra + self.units,
                           (0.0,) * extra + self.translation)

    def with_(self, **changes) -> "Calibration":
        return replace(self, **{k: tuple(float(x) for x in v) if k != "units" else tuple(v)
                                for k, v in changes.items()})

    def spacing_text(self, axis: int = 0) -> str:
        """``10 nm`` (or ``10`` without a unit): one axis's voxel size for a summary line."""
        unit = self.units[axis]
        return f"{self.voxel_size[axis]:g}" + (f" {unit_symbol(unit, 'ome')}" if unit else "")
