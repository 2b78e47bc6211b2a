"""The vllm backend: policies run inside vLLM's paged KV cache (vLLM 0.32.0, CPU verified end to end).

``backend.VLLMBackend`` implements ``backends.base.Backend`` (through ``backends.paged.engine.PagedEngine``);
``scheduler`` and ``runner`` / ``gpu_worker`` extend vLLM's scheduler and CPU / CUDA workers through its
``scheduler_cls`` / ``worker_cls`` hooks; ``runtime`` is the policy inside the worker; ``layouts`` the CPU attention
kernels' KV layouts and the GPU backends' dense view; ``checks`` what is set or refused. Importing this package
does not import vLLM.
"""
