"""``--compile``: the decode step under ``torch.compile(mode="reduce-overhead")``, i.e. replayed as CUDA graphs.

The step (``decode.decode_forward``) has one shape per (batch, attention span) -- the span is the whole buffer
once the slots advanced reach it -- and no host synchronisation, so each shape is captured once and replayed.
What changes per step lives in device tensors updated in place (every row's write slot, positions, the cache's
buffers); those are marked as static addresses, as transformers' own static cache does. Compaction, finishing
rows and the prompt forward run eagerly, outside the graphs. A batch that loses rows or a cache that shrinks gets
new buffers, hence one more capture.
"""

from __future__ import annotations

import dataclasses

import torch

from backends.base import BackendError
from backends.hf.decode import ModelParts, decode_forward
from zoo.base import Policy

#: distinct (batch, span) shapes one run may capture before torch.compile falls back to eager
CAPTURED_SHAPES = 64


def check_compile(device: torch.device, policy: Policy | None = None) -> None:
    """Refuse, in one line, a ``--compile`` that cannot capture: not on CUDA, or a policy observing inside the
    attention (its observer runs Python in every layer)."""
    if device.type != "cuda":
        raise BackendError(f"--compile captures the decode step as CUDA graphs: it needs --device cuda, not "
                           f"{device.type} (drop --compile on CPU)")
    if policy is not None and policy.needs & {"queries", "attention"}:
        raise BackendError(f"--compile runs policies that observe hidden states or nothing; {policy.name} "
                           "observes inside the attention: drop --compile for it")


def compile_parts(parts: ModelParts, device: torch.device) -> ModelParts:
    """``parts`` whose decode step is compiled for CUDA-graph replay (refused off CUDA, see ``check_compile``)."""
    check_compile(device)
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, CAPTURED_SHAPES)
    # dynamic shapes after the first change of span or batch: one compile serves them all, each shape is then
    # recorded as its own CUDA graph (a recompile per span would cost minutes on a 7B model)
    compiled = torch.compile(decode_forward, mode="reduce-overhead")

    def step(parts, cache, observer, input_ids, positions):
        for tensor in (cache.kv, cache.flags, cache.ids, cache.scores, cache.slot, positions):
            if tensor is not None:
                torch._dynamo.mark_static_address(tensor)
        return compiled(parts, cache, observer, input_ids, positions)

    return dataclasses.replace(parts, compiled_step=step)
