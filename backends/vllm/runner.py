"""vLLM worker and model runner that run a policy (installed with ``--worker-cls``).

``CompactingCPUWorker`` is vLLM's ``CPUWorker``; after ``init_device`` its model runner becomes a
``CompactingCPUModelRunner``: vLLM's ``CPUModelRunner`` (V1 runner) with four methods extended, each calling the
original first and then ``runtime.WorkerRuntime`` (see there for what each step adds):

* ``GPUModelRunner._update_states``  -> request lifecycle (finished / preempted / resumed / new);
* ``GPUModelRunner._prepare_inputs`` -> physical attention lengths and slot mapping, logical positions;
* ``GPUModelRunner.execute_model``   -> observations (hidden states, recent queries);
* ``GPUModelRunner.sample_tokens``   -> compaction, reported on ``ModelRunnerOutput.dynts_compactions`` (and the
  step's policy seconds per request on ``dynts_policy_s``).

Without a configured policy (``dynts_configure(None)``) the runner is vanilla vLLM. Under ``dynts-bench serve`` it
configures itself from the environment (``backends.vllm.serve``) on its first scheduled step.
"""

from __future__ import annotations

from typing import Any

from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.cpu_worker import CPUWorker

from backends.base import BackendError
from backends.serving import served_spec
from backends.vllm.runtime import WorkerRuntime
from backends.vllm.serve import build_vllm_served_policy
from zoo.base import Policy


class CompactingCPUModelRunner(CPUModelRunner):
    """``CPUModelRunner`` + a ``WorkerRuntime`` when a policy is configured (module docstring)."""

    dynts: WorkerRuntime | None = None
    _served_checked = False

    def dynts_configure(self, policy: Policy | None, think_end_id: int | None,
                        default_options: dict[str, Any] | None = None) -> None:
        if self.dynts is not None:  # called between generations: what it still tracks has finished
            self.dynts.close()
        evicts = policy is not None and policy.evicts
        self.dynts = WorkerRuntime(self, policy, think_end_id, default_options) if evicts else None

    def _configure_served(self) -> None:
        """Under ``dynts-bench serve`` the policy comes from the environment, once the KV caches exist."""
        self._served_checked = True
        spec = served_spec()
        if spec is not None and self.dynts is None:
            policy, think_end_id = build_vllm_served_policy(spec)
            self.dynts_configure(policy, think_end_id, spec.default_options)

    def _update_states(self, scheduler_output: Any):
        if not self._served_checked:
            self._configure_served()
        runtime = self.dynts
        if runtime is not None:
            runtime.before_update(scheduler_output)
        result = super()._update_states(scheduler_output)
        if runtime is not None:
            runtime.after_update(scheduler_output, self)
        return result

    def _prepare_inputs(self, scheduler_output: Any, num_scheduled_tokens: Any):
        result = super()._prepare_inputs(scheduler_output, num_scheduled_tokens)
        if self.dynts is not None:
            self.dynts.adjust_inputs(self, num_scheduled_tokens)
        return result

    def execute_model(self, scheduler_output: Any, intermediate_tensors: Any = None):
        result = super().execute_model(scheduler_output, intermediate_tensors)
        if self.dynts is not None:
            self.dynts.after_forward(self)
        return result

    def sample_tokens(self, grammar_output: Any):
        result = super().sample_tokens(grammar_output)
        if self.dynts is not None:
            reports, policy_s = self.dynts.after_sample(self)
            if reports or policy_s:
                if not isinstance(result, ModelRunnerOutput):
                    raise BackendError("the vllm backend needs synchronous model runner outputs (async scheduling off)")
                result.dynts_compactions = reports  # type: ignore[attr-defined]
                result.dynts_policy_s = policy_s  # type: ignore[attr-defined]
        return result


class CompactingCPUWorker(CPUWorker):
    """``CPUWorker`` whose model runner compacts (``--worker-cls backends.vllm.runner.CompactingCPUWorker``)."""

    def init_device(self) -> None:
        super().init_device()
        if type(self.model_runner) is not CPUModelRunner:
            raise BackendError(
                f"the vllm backend extends vLLM's V1 CPUModelRunner, but the worker built "
                f"{type(self.model_runner).__name__}: set VLLM_USE_V2_MODEL_RUNNER=0"
            )
        self.model_runner.__class__ = CompactingCPUModelRunner

    def dynts_configure(self, policy: Policy | None, think_end_id: int | None) -> None:
        self.model_runner.dynts_configure(policy, think_end_id)  # type: ignore[attr-defined]

    def dynts_kv_isas(self) -> list[str]:
        """The attention ISA of each layer on this rank (``collective_rpc``: reachable under tensor parallelism)."""
        context = self.model_runner.compilation_config.static_forward_context
        return sorted({str(getattr(layer, "isa", "")) for layer in context.values() if hasattr(layer, "isa")})

    def dynts_kept_digest(self) -> str | None:
        """sha256 of the kept sets this rank chose itself (tensor parallelism: equal on every rank)."""
        runtime = self.model_runner.dynts  # type: ignore[attr-defined]
        return None if runtime is None else runtime.kept_digest.hexdigest()
