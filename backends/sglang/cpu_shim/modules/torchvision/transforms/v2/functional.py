"""``torchvision.transforms.v2.functional``: the v1 functions (see ``torchvision.transforms.functional``)."""

from _dynts_shim import module_getattr

from torchvision.transforms.functional import (  # noqa: F401
    InterpolationMode,
    normalize,
    pil_to_tensor,
    resize,
    to_tensor,
)

__getattr__ = module_getattr("torchvision.transforms.v2.functional")
