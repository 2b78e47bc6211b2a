"""One run's lifecycle, the same for every workload: open (or reuse) the result directory, find what an earlier
invocation finished, record the environment, reset the peak-memory counters, sample the GPU
while generating, and finally aggregate the rows into ``summary.json`` (atomically).

    backend.prepare(policy)  # before any directory exists: a policy that cannot bind leaves nothing behind
    with ActiveRun(config, backend, policy, out_root, run_id) as run:
        if run.reused is None:
            workload.generate(run, backend, policy, on_sample)
    outcome = run.finish(workload.quality(run.rows()))
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.base import Backend
from harness.results.rundir import RunDir, config_hash, default_run_id
from harness.results.summary import summarize_samples
from harness.runs.config import RunConfig
from harness.runs.environment import environment
from harness.runs.fingerprints import code_fingerprint
from harness.runs.resources import NvmlSampler, cuda_memory, peak_rss_bytes, reset_cuda_peak
from zoo.base import Policy


@dataclass
class RunOutcome:
    run_dir: RunDir
    summary: dict[str, Any]
    resumed_samples: int  # samples found finished from an earlier, interrupted invocation
    reused: bool  # the run was already complete: nothing was generated


class ActiveRun:
    """A policy's run over a workload while it generates; ``reused`` is set when it was already complete. The
    policy is bound to the backend (``Backend.prepare``) by the caller, before the run directory is opened."""

    def __init__(self, config: RunConfig, backend: Backend, policy: Policy, out_root: Path,
                 run_id: str | None = None, allow_stale: bool = False) -> None:
        self.config = config
        self.config_dict = config.to_dict()
        self.backend = backend
        self.policy = policy
        self.dir = RunDir.open(out_root, run_id or default_run_id(self.config_dict), self.config_dict,
                               {"code": code_fingerprint()}, allow_stale)
        self.reused: RunOutcome | None = None
        self.done: set[str] = set()
        self.env: dict[str, Any] = {}
        self._nvml = NvmlSampler()
        self._started = 0.0
        self.wall_s = 0.0

    def __enter__(self) -> ActiveRun:
        self.dir.lock()
        if self.dir.is_complete:
            summary = json.loads((self.dir.path / "summary.json").read_text())["metrics"]
            self.reused = RunOutcome(self.dir, summary, summary.get("n_samples", 0), reused=True)
            return self
        self.done = self.dir.done_ids()
        self.env = environment()
        reset_cuda_peak()
        self._started = time.perf_counter()
        self._nvml.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.reused is None:
            self._nvml.__exit__(*exc)
            self.wall_s = time.perf_counter() - self._started
        if exc[0] is not None:  # nothing more will be written: let another process resume it
            self.dir.unlock()

    # ------------------------------------------------------------------ while generating
    def append(self, row: dict[str, Any]) -> None:
        """Save one finished sample (fsync'd), stamped with the run's config hash and the code's git sha."""
        self.dir.append_sample({**row, "config_hash": self.dir.config_hash, "git_sha": self.env["git_sha"]})

    def rows(self) -> list[dict[str, Any]]:
        return self.dir.samples()

    # ------------------------------------------------------------------ at the end
    def finish(self, quality: dict[str, Any]) -> RunOutcome:
        """Aggregate the samples with the workload's ``quality`` and write ``summary.json`` atomically."""
        if self.reused is not None:
            self.dir.unlock()
            return self.reused
        rows = self.rows()
        summary = summarize_samples(rows)
        summary.update(quality)
        summary["wall_s_this_invocation"] = self.wall_s
        summary["peak_rss_bytes"] = peak_rss_bytes()
        summary.update(cuda_memory())
        summary["nvml"] = self._nvml.summary()
        summary["kv_batch_allocated_max_bytes"] = max(
            (r.get("extra", {}).get("kv_batch_allocated_bytes", 0) for r in rows), default=0
        )
        self.dir.write_summary(
            {
                "run_id": self.dir.path.name,
                "config": self.config_dict,
                "config_hash": config_hash(self.config_dict),
                "seed": self.config_dict["sampling"]["seed"],
                "model": self.backend.describe(),
                "environment": self.env,
                "resumed_samples": len(self.done),
                "metrics": summary,
            }
        )
        self.dir.unlock()
        return RunOutcome(self.dir, summary, len(self.done), reused=False)
