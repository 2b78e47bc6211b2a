"""Engine-neutral compaction of paged KV caches (vLLM blocks, SGLang token slots: a block of size 1).

A policy hands back, per request, the slots it keeps (indices into the request's physical token list, in
order). ``plan`` turns that into a ``CompactionPlan`` over the request's block table: which slot is copied
where (kept tokens move to the front, order preserved), which whole blocks become free, the new physical
length and the logical (RoPE) positions that stay. ``moves`` applies the copies to any cache whose per-block
slab stores each token at a fixed set of element offsets (the CPU kernels' layouts), or to a dense
``[blocks, heads, block_size, channels]`` cache (the GPU kernels' logical view), overlapping moves included.
The rest of what both engine backends share: ``engine`` (the backend's generate loop), ``batch`` (the
compaction's ``CacheView`` and selection), ``keys`` (lazy key reads), ``state`` (per-request slot maps, policy
state, recent queries), ``remap`` (zero-copy compaction of a token-major pool), ``release`` (the pinned engine
release). Nothing here imports an engine.
"""

from backends.paged.moves import apply_dense_moves, apply_moves, gather_dense, gather_tokens
from backends.paged.plan import BatchPlan, CompactionPlan, PlanError, merge_plans, plan_compaction

__all__ = ["BatchPlan", "CompactionPlan", "PlanError", "apply_dense_moves", "apply_moves", "gather_dense",
           "gather_tokens", "merge_plans", "plan_compaction"]
