"""lm-eval's own CLI and Python API with our model registered as ``dynts-bench``: ``python -m harness.lmeval run
--model dynts-bench --model_args model=tiny-reasoner,policy=window,budget=96 --tasks ...``, or ``import
harness.lmeval`` then ``simple_evaluate(model="dynts-bench", model_args=...)``. Every ``dynts-bench run`` option is a
``--model_args`` key; ``PolicyLM`` (``workloads/lmeval_model.py``) does the generating."""

from __future__ import annotations

from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.utils import simple_parse_args_string

from backends import build_backend
from harness.runs.options import RunOptions
from harness.runs.runplan import build_policies, build_sampling, build_schedule
from harness.workloads.interface import request_seed
from harness.workloads.lmeval_model import PolicyLM
from harness.workloads.lmeval_tasks import TaskError, shipped_tasks


@register_model("dynts-bench")
class DyntsLM(PolicyLM):
    """``PolicyLM`` built from ``--model_args`` by lm-eval's own CLI."""

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> DyntsLM:
        """``--model_args model=tiny-reasoner,policy=window,budget=96``: any ``dynts-bench run`` option."""
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> DyntsLM:
        """Options come from ``--model_args`` only: lm-eval's own ``--batch_size`` / ``--device`` defaults (1,
        cuda) would silently override ours, so pass ``batch_size=`` and ``device=`` there."""
        return cls.from_options(RunOptions.from_mapping(arg_dict, where="--model_args"))

    @classmethod
    def from_options(cls, options: Any) -> DyntsLM:
        """A backend and one policy built from ``RunOptions``; every shipped task scored by its own kind."""
        policies = build_policies(options)
        if len(policies) != 1:
            raise TaskError(f"--model_args names {len(policies)} policies: lm-eval runs one, pass policy=NAME")
        ((_, policy),) = policies.items()
        schedule = build_schedule(options)
        backend = build_backend(options.backend, **options.backend_kwargs())
        backend.prepare(policy)
        kinds = {name: info["kind"] for name, info in shipped_tasks().items()}
        return cls(backend, policy, schedule if policy.evicts else None, build_sampling(options), kinds,
                   seed_of=lambda sample_id: request_seed(options.seed, sample_id))


if __name__ == "__main__":  # lm-eval's own CLI with our model registered: python -m harness.lmeval run ...
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
