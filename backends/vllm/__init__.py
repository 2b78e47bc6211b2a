"""The vllm backend: policies run inside vLLM's paged KV cache (vLLM 0.32.0, CPU verified end to end).

``backend.VLLMBackend`` implements ``backends.base.Backend``; ``scheduler`` and ``runner`` extend vLLM's
scheduler and worker through its ``scheduler_cls`` / ``worker_cls`` hooks; ``runtime`` is the policy inside the
worker; ``layouts`` the CPU attention kernels' KV layouts. Importing this package does not import vLLM.
"""
