"""CPU test shim for SGLang: plain-torch stand-ins for the few ``torchvision`` / ``sgl_kernel`` names SGLang
0.5.23 imports before it can run on a CPU without CUDA. Test and CPU use only: nothing here is on ``sys.path``
until ``activate()`` is called, and ``activate()`` does nothing on a machine with CUDA (the real packages belong
there).

What it replaces (``modules/``):

* ``torchvision.transforms`` (+ ``.functional``): ``InterpolationMode``, ``Compose``, ``Lambda``, ``ToTensor``,
  ``Normalize``, ``Resize`` and ``to_tensor`` / ``normalize`` / ``resize``. SGLang imports them at the top of its
  multimodal configs (``sglang/srt/configs/__init__`` -> ``nano_nemotron_vl`` -> ``multimodal/internvl_utils``,
  ``configs/deepseek_ocr``); the registry's torchvision wheels link CUDA and fail to import on CPU.
* ``sgl_kernel.copy_all_layer_kv_cache_cpu``: imported by ``sglang/kernels/ops/kvcache/cache_move.py`` when
  ``SGLANG_USE_CPU_ENGINE=1``; the registry has only CUDA builds of ``sgl_kernel`` / ``sglang-kernel``.

Any other name of those packages resolves to a placeholder that raises when called (an image model would
need the real torchvision).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from backends.base import BackendError

MODULES = Path(__file__).resolve().parent / "modules"
SHIMMED = ("torchvision", "sgl_kernel")


def active() -> bool:
    return str(MODULES) in sys.path


def activate() -> bool:
    """Put the shim modules first on ``sys.path`` (and ``PYTHONPATH``, for SGLang's spawned processes); returns
    whether the shim is active. A no-op on a machine with CUDA: there SGLang's own CUDA dependencies are installed
    (``pip install 'dynts-bench[sglang]'``) and nothing is shadowed."""
    if active():
        return True
    import torch

    if torch.cuda.is_available():
        return False
    loaded = [name for name in SHIMMED if name in sys.modules and not _is_shim(sys.modules[name])]
    if loaded:
        raise BackendError(f"{loaded[0]} is already imported: activate the SGLang CPU shim before importing sglang")
    sys.path.insert(0, str(MODULES))
    paths = [str(MODULES)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    return True


def _is_shim(module: object) -> bool:
    return str(getattr(module, "__file__", "") or "").startswith(str(MODULES))
