"""The offline side of the comparison: the same greedy requests through the in-process backend (what
``dynts-bench run --backend B`` uses), with the policy and schedule the server was given."""

from __future__ import annotations

from typing import Any

from backends import build_backend
from backends.base import Backend, GenerationRequest, SamplingParams
from benchmarks.serve_load.workload import LoadRequest
from harness.cli.serve_policy import served_policy
from harness.runs.options import RunOptions
from zoo import build_policy
from zoo.schedule import EvictionSchedule


def served_setup(backend: str, model: str, policy: str, schedule_args: dict[str, Any]) -> tuple[str, dict, dict | None]:
    """(policy name, build options, schedule dict) exactly as ``dynts-bench serve`` derives them."""

    return served_policy(RunOptions(policy=(policy,), backend=backend, model=model, **schedule_args))


def offline_texts(backend_name: str, model: str, policy: str, schedule_args: dict[str, Any],
                  requests: list[LoadRequest], max_tokens: int, batch_size: int,
                  backend: Backend | None = None) -> dict[str, str]:
    """Generated text per request id, greedy, offline; through ``backend`` when given (left open: a test session's
    engine), else through a backend built here and closed after."""
    name, options, schedule = served_setup(backend_name, model, policy, schedule_args)
    own = backend is None
    engine = build_backend(backend_name, model=model, batch_size=batch_size) if backend is None else backend
    try:
        built = build_policy(name, **options)
        engine.prepare(built)
        results = engine.generate([GenerationRequest(r.request_id, list(r.prompt_ids)) for r in requests], built,
                                  None if schedule is None else EvictionSchedule(**schedule),
                                  SamplingParams(max_new_tokens=max_tokens))
        return {r.request_id: engine.decode(r.output_ids) for r in results}
    finally:
        if own:
            engine.close()


def compare(request: LoadRequest, served: str, offline: str) -> bool:
    """Whether a served greedy reply is the offline one (cut at its stop string, as the server cuts it).

    Leading whitespace is not compared: a server detokenizes incrementally and keeps the space that starts the
    first generated word, while decoding the whole output at once drops it.
    """
    if request.stop is not None and request.stop in offline:
        offline = offline[: offline.index(request.stop)]
    return served.lstrip() == offline.lstrip()
