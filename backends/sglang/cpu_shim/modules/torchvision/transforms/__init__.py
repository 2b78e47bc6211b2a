"""``torchvision.transforms`` in plain torch: the classes SGLang's multimodal configs import (see functional)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from _dynts_shim import module_getattr

from torchvision.transforms import functional
from torchvision.transforms.functional import InterpolationMode

__all__ = ["Compose", "InterpolationMode", "Lambda", "Normalize", "Resize", "ToTensor", "functional"]
__getattr__ = module_getattr("torchvision.transforms")


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Any) -> Any:
        for t in self.transforms:
            img = t(img)
        return img


class Lambda:
    def __init__(self, lambd: Callable[[Any], Any]) -> None:
        if not callable(lambd):
            raise TypeError(f"Lambda takes a callable, got {type(lambd).__name__}")
        self.lambd = lambd

    def __call__(self, img: Any) -> Any:
        return self.lambd(img)


class ToTensor:
    def __call__(self, pic: Any) -> Any:
        return functional.to_tensor(pic)


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> None:
        self.mean, self.std, self.inplace = mean, std, inplace

    def __call__(self, tensor: Any) -> Any:
        return functional.normalize(tensor, self.mean, self.std, self.inplace)


class Resize:
    def __init__(self, size: int | Sequence[int], interpolation: InterpolationMode = InterpolationMode.BILINEAR,
                 max_size: int | None = None, antialias: bool = True) -> None:
        self.size, self.interpolation, self.max_size, self.antialias = size, interpolation, max_size, antialias

    def __call__(self, img: Any) -> Any:
        return functional.resize(img, self.size, self.interpolation, self.max_size, self.antialias)
