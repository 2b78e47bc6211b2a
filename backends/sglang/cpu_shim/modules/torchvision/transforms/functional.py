"""``torchvision.transforms.functional`` in plain torch: the functions SGLang's multimodal configs import.

Semantics follow torchvision's documentation: ``to_tensor`` turns a PIL image or an ``HxWxC`` uint8 array into
a float ``CxHxW`` tensor in [0, 1] (``pil_to_tensor``: the same layout, unscaled); ``normalize`` computes
``(x - mean) / std`` per channel; ``resize`` takes ``(h, w)`` or an int for the smaller edge (aspect ratio kept,
``int(long * size / short)`` for the other edge).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np
import torch
from _dynts_shim import module_getattr

__getattr__ = module_getattr("torchvision.transforms.functional")


class InterpolationMode(Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _is_pil(img: Any) -> bool:
    return type(img).__module__.startswith("PIL.")


def to_tensor(pic: Any) -> torch.Tensor:
    if isinstance(pic, torch.Tensor):
        raise TypeError("to_tensor takes a PIL image or a numpy array, not a tensor")
    array = np.array(pic, copy=True)
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor.float()


def pil_to_tensor(pic: Any) -> torch.Tensor:
    """A PIL image as a ``CxHxW`` tensor of its own dtype (no scaling)."""
    if not _is_pil(pic):
        raise TypeError(f"pil_to_tensor takes a PIL image, got {type(pic).__name__}")
    array = np.array(pic, copy=True)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def normalize(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float], inplace: bool = False
              ) -> torch.Tensor:
    if not tensor.is_floating_point():
        raise TypeError(f"normalize needs a float tensor, got {tensor.dtype}")
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
    if bool((std_t == 0).any()):
        raise ValueError("std evaluated to zero, leading to division by zero")
    out = tensor if inplace else tensor.clone()
    return out.sub_(mean_t).div_(std_t)


def _target_size(height: int, width: int, size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int) or len(size) == 1:
        short = size if isinstance(size, int) else size[0]
        if height <= width:
            return short, int(short * width / height)
        return int(short * height / width), short
    return int(size[0]), int(size[1])


def resize(img: Any, size: int | Sequence[int], interpolation: InterpolationMode = InterpolationMode.BILINEAR,
           max_size: int | None = None, antialias: bool = True) -> Any:
    if max_size is not None:
        raise NotImplementedError("resize(max_size=...) is not provided by the dynts-bench SGLang CPU shim")
    mode = interpolation.value if isinstance(interpolation, InterpolationMode) else str(interpolation)
    if _is_pil(img):
        from PIL import Image

        h, w = _target_size(img.height, img.width, size)
        resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                    "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}[mode]
        return img.resize((w, h), resample)
    h, w = _target_size(img.shape[-2], img.shape[-1], size)
    batch = img.unsqueeze(0) if img.dim() == 3 else img
    smooth = mode in ("bilinear", "bicubic")
    out = torch.nn.functional.interpolate(batch.float(), size=(h, w), mode=mode,
                                          align_corners=False if smooth else None, antialias=antialias and smooth)
    out = out.to(img.dtype) if img.is_floating_point() else out.round().clamp(0, 255).to(img.dtype)
    return out.squeeze(0) if img.dim() == 3 else out
