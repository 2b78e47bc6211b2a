"""The sglang backend: policies run inside SGLang's token pool (SGLang 0.5.23, page size 1, zero-copy).

``plugin`` is the SGLang plugin (entry point ``sglang.srt.plugins``): ``HookRegistry`` hooks that call
``runtime.SchedulerRuntime`` in the scheduler process; ``compaction`` rewrites ``req_to_token`` rows;
``checks`` pins the release and the flags; ``backend.SGLangBackend`` implements ``backends.base.Backend`` over an
in-process ``sglang.Engine``; ``cpu_shim`` lets SGLang import on a CPU without CUDA (tests and CPU runs only).
Importing this package does not import SGLang.
"""
