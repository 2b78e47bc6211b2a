"""The workload protocol: what a run generates and how its rows are judged.

A workload is built once per ``dynts-bench run`` from the options (no model needed), then, for each policy,
generates the samples an earlier invocation did not finish into an ``ActiveRun`` and says what the rows mean
(``quality``). The lifecycle around it (result directory, resume, environment, summary) is ``harness.runs.lifecycle``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from backends.base import Backend
from harness.runs.lifecycle import ActiveRun
from zoo.base import Policy
from zoo.schedule import EvictionSchedule

OnSample = Callable[[], None]


class Workload(Protocol):
    #: the backend protocol it needs (``backends.base.PROTOCOLS``): checked before any generation
    protocol: str
    source_name: str  # file or task name recorded in the config
    source_hash: str  # content hash of the data it reads
    n_items: int  # samples each policy produces

    def config_extra(self) -> dict[str, Any]:
        """Workload settings recorded in every run's config (and so in its hash)."""
        ...

    def check(self, backend: Backend, policies: Mapping[str, Policy], schedule: EvictionSchedule) -> None:
        """Refuse, before any generation, what cannot run (e.g. a prompt longer than a budget allows)."""
        ...

    def generate(self, run: ActiveRun, backend: Backend, policy: Policy, on_sample: OnSample | None) -> None:
        """Generate every sample ``run.done`` lacks and ``run.append`` each row as soon as it is done."""
        ...

    def quality(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The workload's quality metrics over all of a run's rows (accuracy, Pass@k, KL, ...)."""
        ...


def request_seed(seed: int, item_id: str) -> int:
    """A per-sample seed derived from the run seed and the sample id (stable across batching and resumes)."""
    digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
