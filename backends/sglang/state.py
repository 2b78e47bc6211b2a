"""Per-request book-keeping in the scheduler process; the engine-neutral parts are the vLLM adapter's.

``backends.vllm.state`` imports no vLLM: its ``RequestState`` (slots -> logical tokens, policy state),
``QueryStore`` (recent post-RoPE queries, a ring per request) and ``PendingObservation`` (decode tokens buffered
before ``Policy.observe``) serve both paged engines.
"""

from backends.vllm.state import OBSERVE_CHUNK, PendingObservation, QueryStore, RequestState

__all__ = ["OBSERVE_CHUNK", "PendingObservation", "QueryStore", "RequestState"]
