"""``torchvision.io``: nothing provided (transformers' image utilities import names from it when torchvision
is present; text models never call them)."""

from _dynts_shim import module_getattr

__getattr__ = module_getattr("torchvision.io")
