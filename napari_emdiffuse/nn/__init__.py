"""Networks: one UNet definition for 1D, 2D and 3D data and its residual variant (no Qt, no napari)."""
from .residual import ResidualUNet
from .unet import UNet

__all__ = ["ResidualUNet", "UNet"]
