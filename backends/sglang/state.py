"""Per-request book-keeping in the scheduler process; the engine-neutral parts are the vLLM adapter's.

``backends.vllm.state`` imports no vLLM: its ``RequestState`` (slots -> logical tokens, policy state),
``QueryStore`` (recent post-RoPE queries, a ring per request) and ``observe_tokens`` / ``flush_observations``
(decode tokens buffered before ``Policy.observe``) serve both paged engines.
"""

from backends.vllm.state import (
    OBSERVE_CHUNK,
    PendingObservation,
    QueryStore,
    RequestState,
    flush_observations,
    observe_tokens,
)

__all__ = ["OBSERVE_CHUNK", "PendingObservation", "QueryStore", "RequestState", "flush_observations",
           "observe_tokens"]
