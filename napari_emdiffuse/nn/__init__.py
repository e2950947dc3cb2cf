"""Networks: one UNet definition for 1D, 2D and 3D data (no Qt, no napari)."""
from .unet import UNet

__all__ = ["UNet"]
