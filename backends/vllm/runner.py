"""vLLM worker and model runner that run a policy (installed with ``--worker-cls``), on CPU and on CUDA.

``CompactingRunner`` extends four methods of vLLM's V1 ``GPUModelRunner`` -- which ``CPUModelRunner`` inherits
unchanged -- each calling vLLM's own first and then ``runtime.WorkerRuntime`` (see there for what each step adds):

* ``_update_states``  -> request lifecycle (finished / preempted / resumed / new);
* ``_prepare_inputs`` -> physical attention lengths and slot mapping, logical positions;
* ``execute_model``   -> observations (hidden states, recent queries);
* ``sample_tokens``   -> compaction, reported on ``ModelRunnerOutput.dynts_compactions`` (and the step's policy
  seconds per request on ``dynts_policy_s``).

The mixin is applied to ``CPUModelRunner`` here and to ``GPUModelRunner`` in ``backends.vllm.gpu_worker``; the
workers (``CompactingCPUWorker``, ``CompactingGPUWorker``) swap the runner vLLM built for the compacting one at
the end of ``init_device``, so no vLLM file is patched. Without a configured policy (``dynts_configure(None)``)
the runner is vanilla vLLM. Under ``dynts-bench serve`` it configures itself from the environment
(``backends.vllm.serve``) on its first scheduled step.
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


class CompactingRunner:
    """Mixin over a V1 model runner: a ``WorkerRuntime`` when a policy is configured (module docstring)."""

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
        result = super()._update_states(scheduler_output)  # type: ignore[misc]
        if runtime is not None:
            runtime.after_update(scheduler_output, self)
        return result

    def _prepare_inputs(self, scheduler_output: Any, num_scheduled_tokens: Any):
        result = super()._prepare_inputs(scheduler_output, num_scheduled_tokens)  # type: ignore[misc]
        if self.dynts is not None:
            self.dynts.adjust_inputs(self, num_scheduled_tokens)
        return result

    def execute_model(self, scheduler_output: Any, intermediate_tensors: Any = None):
        result = super().execute_model(scheduler_output, intermediate_tensors)  # type: ignore[misc]
        if self.dynts is not None:
            self.dynts.after_forward(self)
        return result

    def sample_tokens(self, grammar_output: Any):
        result = super().sample_tokens(grammar_output)  # type: ignore[misc]
        if self.dynts is not None:
            reports, policy_s = self.dynts.after_sample(self)
            if reports or policy_s:
                if not isinstance(result, ModelRunnerOutput):
                    raise BackendError("the vllm backend needs synchronous model runner outputs (async scheduling off)")
                result.dynts_compactions = reports  # type: ignore[attr-defined]
                result.dynts_policy_s = policy_s  # type: ignore[attr-defined]
        return result


#: the methods ``CompactingRunner`` extends (their signatures must stay vLLM's: tests compare them)
EXTENDED_METHODS = ("_update_states", "_prepare_inputs", "execute_model", "sample_tokens")


class CompactingCPUModelRunner(CompactingRunner, CPUModelRunner):
    """``CPUModelRunner`` + ``CompactingRunner``."""


class CompactingWorker:
    """Mixin over a vLLM worker: after ``init_device`` its V1 runner becomes ``compacting_runner``."""

    #: the exact class vLLM's ``init_device`` must have built (a V2 runner or a subclass is refused)
    vllm_runner: type
    #: what it becomes
    compacting_runner: type

    def init_device(self) -> None:
        super().init_device()  # type: ignore[misc]
        self.install_compacting_runner()

    def install_compacting_runner(self) -> None:
        built = type(self.model_runner)  # type: ignore[attr-defined]
        if built is not self.vllm_runner:
            raise BackendError(
                f"the vllm backend extends vLLM's V1 {self.vllm_runner.__name__}, but the worker built "
                f"{built.__name__}: set VLLM_USE_V2_MODEL_RUNNER=0"
            )
        self.model_runner.__class__ = self.compacting_runner  # type: ignore[attr-defined]

    def dynts_configure(self, policy: Policy | None, think_end_id: int | None) -> None:
        self.model_runner.dynts_configure(policy, think_end_id)  # type: ignore[attr-defined]

    def dynts_kv_isas(self) -> list[str]:
        """The KV layout of each layer on this rank: the CPU kernel's ISA, or ``dense`` (GPU kernels' view);
        reachable through ``collective_rpc`` under tensor parallelism."""
        context = self.model_runner.compilation_config.static_forward_context  # type: ignore[attr-defined]
        isas = {str(layer.isa) for layer in context.values() if hasattr(layer, "isa")}
        return sorted(isas) or (["dense"] if any(hasattr(layer, "kv_cache") for layer in context.values()) else [])

    def dynts_kept_digest(self) -> str | None:
        """sha256 of the kept sets this rank chose itself (tensor parallelism: equal on every rank)."""
        runtime = self.model_runner.dynts  # type: ignore[attr-defined]
        return None if runtime is None else runtime.kept_digest.hexdigest()


class CompactingCPUWorker(CompactingWorker, CPUWorker):
    """``CPUWorker`` whose model runner compacts (``--worker-cls backends.vllm.runner.CompactingCPUWorker``)."""

    vllm_runner = CPUModelRunner
    compacting_runner = CompactingCPUModelRunner
