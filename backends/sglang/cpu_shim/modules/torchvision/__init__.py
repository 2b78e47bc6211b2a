"""dynts-bench CPU shim for ``torchvision`` (see ``backends/sglang/cpu_shim/__init__.py``): transforms only."""

from _dynts_shim import module_getattr

from torchvision import io, transforms  # noqa: F401

__version__ = "0.0.0+dynts-bench-cpu-shim"
__getattr__ = module_getattr("torchvision")
