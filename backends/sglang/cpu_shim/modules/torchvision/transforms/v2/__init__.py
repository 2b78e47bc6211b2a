"""``torchvision.transforms.v2``: the v1 stand-ins (see ``torchvision.transforms``); other names raise when called."""

from _dynts_shim import module_getattr

from torchvision.transforms import Compose, InterpolationMode, Lambda, Normalize, Resize, ToTensor  # noqa: F401
from torchvision.transforms.v2 import functional  # noqa: F401

__getattr__ = module_getattr("torchvision.transforms.v2")
