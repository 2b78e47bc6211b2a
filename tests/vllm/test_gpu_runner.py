"""One compacting runner, two devices: the ``CompactingRunner`` mixin over vLLM's V1 ``CPUModelRunner`` and
``GPUModelRunner``, and the workers that install it in ``init_device``. Checked against the installed vLLM's own
classes (``inspect.signature``), with vLLM's methods replaced by recorders: no CUDA needed."""

from __future__ import annotations

import inspect
from unittest import mock

import pytest

pytest.importorskip("vllm")

from vllm.v1.worker.cpu_model_runner import CPUModelRunner  # noqa: E402
from vllm.v1.worker.cpu_worker import CPUWorker  # noqa: E402
from vllm.v1.worker.gpu.model_runner import GPUModelRunner as GPUModelRunnerV2  # noqa: E402
from vllm.v1.worker.gpu_model_runner import GPUModelRunner  # noqa: E402
from vllm.v1.worker.gpu_worker import Worker  # noqa: E402

from backends.base import BackendError  # noqa: E402
from backends.vllm.gpu_worker import CompactingGPUModelRunner, CompactingGPUWorker  # noqa: E402
from backends.vllm.runner import (  # noqa: E402
    EXTENDED_METHODS,
    CompactingCPUModelRunner,
    CompactingCPUWorker,
    CompactingRunner,
)

PAIRS = [(CompactingCPUModelRunner, CPUModelRunner), (CompactingGPUModelRunner, GPUModelRunner)]
WORKERS = [(CompactingCPUWorker, CPUWorker, CPUModelRunner, CompactingCPUModelRunner),
           (CompactingGPUWorker, Worker, GPUModelRunner, CompactingGPUModelRunner)]


def _call_shape(function) -> list[tuple[str, object, object]]:
    """Parameter names, kinds and defaults: what a caller of vLLM's method relies on (annotations aside)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("method", EXTENDED_METHODS)
def test_the_mixin_takes_what_vllms_runner_methods_take(method):
    assert _call_shape(getattr(CompactingRunner, method)) == _call_shape(getattr(GPUModelRunner, method))
    # CPUModelRunner inherits the V1 GPU runner's method: one override serves both
    assert getattr(CPUModelRunner, method) is getattr(GPUModelRunner, method)


@pytest.mark.parametrize("compacting,vllm_runner", PAIRS, ids=["cpu", "gpu"])
def test_each_compacting_runner_is_vllms_runner_with_the_mixin_first(compacting, vllm_runner):
    assert compacting.__mro__[1:3] == (CompactingRunner, vllm_runner)
    for method in EXTENDED_METHODS:
        assert getattr(compacting, method) is getattr(CompactingRunner, method)


class RecordingRuntime:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def before_update(self, scheduler_output):
        self.log.append("runtime.before_update")

    def after_update(self, scheduler_output, runner):
        self.log.append("runtime.after_update")

    def adjust_inputs(self, runner, num_scheduled):
        self.log.append("runtime.adjust_inputs")

    def after_forward(self, runner):
        self.log.append("runtime.after_forward")

    def after_sample(self, runner):
        self.log.append("runtime.after_sample")
        return {"r": "report"}, {"r": 0.5}


@pytest.mark.parametrize("compacting,vllm_runner", PAIRS, ids=["cpu", "gpu"])
def test_every_extended_method_calls_vllms_first_then_the_runtime(compacting, vllm_runner):
    from vllm.v1.outputs import ModelRunnerOutput

    log: list[str] = []
    output = ModelRunnerOutput(req_ids=[], req_id_to_index={})

    def vllm_method(name, result):
        def call(self, *args, **kwargs):
            log.append(f"vllm.{name}")
            return result
        return call

    runner = object.__new__(compacting)
    runner.dynts = RecordingRuntime(log)
    runner._served_checked = True
    with mock.patch.multiple(GPUModelRunner, _update_states=vllm_method("_update_states", None),
                             _prepare_inputs=vllm_method("_prepare_inputs", "inputs"),
                             execute_model=vllm_method("execute_model", None),
                             sample_tokens=vllm_method("sample_tokens", output)):
        runner._update_states("sched")
        assert runner._prepare_inputs("sched", [1]) == "inputs"
        runner.execute_model("sched")
        result = runner.sample_tokens(None)
    assert log == ["runtime.before_update", "vllm._update_states", "runtime.after_update",
                   "vllm._prepare_inputs", "runtime.adjust_inputs", "vllm.execute_model", "runtime.after_forward",
                   "vllm.sample_tokens", "runtime.after_sample"]
    assert result is output and result.dynts_compactions == {"r": "report"} and result.dynts_policy_s == {"r": 0.5}


def test_an_async_runner_output_is_refused_with_one_line_when_there_is_something_to_report():
    runner = object.__new__(CompactingGPUModelRunner)
    runner.dynts = RecordingRuntime([])
    with mock.patch.object(GPUModelRunner, "sample_tokens", lambda self, grammar: object()):
        with pytest.raises(BackendError, match="async scheduling off"):
            runner.sample_tokens(None)


@pytest.mark.parametrize("worker_cls,vllm_worker,vllm_runner,compacting", WORKERS, ids=["cpu", "gpu"])
def test_init_device_swaps_the_v1_runner_for_the_compacting_one(worker_cls, vllm_worker, vllm_runner, compacting):
    built = object.__new__(vllm_runner)
    built.marker = "built by vLLM"

    def init_device(self):
        self.model_runner = built

    worker = object.__new__(worker_cls)
    with mock.patch.object(vllm_worker, "init_device", init_device):
        worker.init_device()
    assert worker.model_runner is built and type(built) is compacting and built.marker == "built by vLLM"
    assert built.dynts is None  # vanilla until a policy is configured


@pytest.mark.parametrize("worker_cls,vllm_worker", [(CompactingGPUWorker, Worker), (CompactingCPUWorker, CPUWorker)],
                         ids=["gpu", "cpu"])
def test_a_v2_runner_is_refused_with_one_line(worker_cls, vllm_worker):
    def init_device(self):
        self.model_runner = object.__new__(GPUModelRunnerV2)

    worker = object.__new__(worker_cls)
    with mock.patch.object(vllm_worker, "init_device", init_device):
        with pytest.raises(BackendError, match="VLLM_USE_V2_MODEL_RUNNER=0") as raised:
            worker.init_device()
    assert "\n" not in str(raised.value)


def test_vllms_worker_builds_the_v1_runner_when_the_v2_one_is_off():
    """What the swap relies on: ``Worker._make_model_runner`` builds ``gpu_model_runner.GPUModelRunner``."""
    worker = object.__new__(Worker)
    worker.use_v2_model_runner = False
    worker.vllm_config, worker.device = "config", "cuda:0"
    with mock.patch.object(GPUModelRunner, "__init__", return_value=None) as init:
        runner = worker._make_model_runner()
    assert type(runner) is GPUModelRunner
    init.assert_called_once_with("config", "cuda:0")
