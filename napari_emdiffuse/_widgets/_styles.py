"""How result layers look, written once for the widgets and the reader: the restored image in
gray, uncertainty overlays fading in with their colour, the reliability mask in red; an isotropic
volume and its std as the Isotropic widget shows them. Names follow the source's."""
from __future__ import annotations

import numpy as np
from napari.utils.colormaps import Colormap, DirectLabelColormap

from ..results import BY_ROLE, MASK_RGBA

# The Isotropic widget's roles by result field: the volume and its uncertainty overlays
ISOTROPIC_ROLES = {"mean": "isotropic", "std": "isotropic_std", "uncertainty": "isotropic_uncertainty"}


def uncertainty_colormap(name: str, rgb: tuple[float, float, float]):
    """``rgb`` fading in with the uncertainty: transparent where it is low, so the restored image
    shows through, opaque where it is high."""
    return Colormap(colors=[(*rgb, 0.0), (*rgb, 1.0)], name=name)


def mask_colormap():
    return DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: MASK_RGBA})


def result_style(role: str, source_name: str, show: dict[str, bool] | None = None) -> tuple[str, dict]:
    """(layer type, layer keyword arguments) of a restore's result layer in ``role``: its name
    and look; ``show`` overrides whether it is visible."""
    output = BY_ROLE[role]
    visible = (show or {}).get(role, output.shown)
    name = f"{source_name} {output.label}"
    if output.layer == "labels":
        return "labels", {"name": name, "opacity": 0.4, "colormap": mask_colormap(), "visible": visible}
    if output.colour is None:
        return "image", {"name": name, "colormap": "gray"}
    return "image", {"name": name, "colormap": uncertainty_colormap(output.label, output.colour),
                     "blending": "translucent", "opacity": 0.8, "visible": visible}


def isotropic_style(role: str, source_name: str) -> dict:
    """Layer keyword arguments of an isotropic volume (``isotropic``) or one of its uncertainty
    overlays (the predicted error, shown; the std of the samples, hidden)."""
    if role == "isotropic":
        return {"name": f"{source_name} isotropic", "colormap": "gray"}
    label = "predicted error" if role == "isotropic_uncertainty" else "uncertainty (std)"
    return {"name": f"{source_name} isotropic {label}", "colormap": "inferno", "blending": "additive",
            "opacity": 0.8, "visible": role == "isotropic_uncertainty"}


def std_limits(values: np.ndarray) -> tuple[float, float]:
    """An uncertainty overlay's contrast: from the median (typical uncertainty stays clear) to the
    99.5th percentile."""
    finite = values[np.isfinite(values)]
    low, top = np.percentile(finite, [50, 99.5]) if finite.size else (0.0, 1.0)
    return float(low), float(max(top, low + 1e-6))


def isotropic_std_limits(values: np.ndarray) -> tuple[float, float]:
    """An isotropic std overlay's contrast: from 0 to the 99.5th percentile."""
    finite = values[np.isfinite(values)]
    top = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    return 0.0, max(top, 1e-6)
