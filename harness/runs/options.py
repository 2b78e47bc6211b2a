"""``RunOptions``: the one source of truth for what a run is asked to do.

Its fields *are* the ``dynts-bench run`` flags (the command's signature is built from them), the keys of a
sweep grid and the ``--model_args`` of lm-eval's own CLI (``lm_eval --model dynts-bench --model_args
model=tiny-reasoner,policy=window,budget=96``). Validation that needs no model lives here, so it runs before
any model is loaded; values from text (grids, lm-eval) are coerced to the field's type with one-line errors.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from backends import BACKENDS
from backends.hf.loading import MODEL_ALIASES
from harness.results.rundir import ResultsError
from harness.runs.catalog import MODEL_TASKS, default_max_new_tokens
from harness.tinyreasoner.tasks import embedded_task
from harness.workloads.lmeval_tasks import task_names
from harness.workloads.prompt_file import DataError, PromptFileError
from zoo import options_help, registry
from zoo.errors import UserError

DEFAULT_MODEL = "tiny-reasoner"
DEFAULT_MAX_NEW_TOKENS = 512
PROTOCOLS = ("generate", "replay")
DTYPES = ("float32", "bfloat16", "float16")
#: options that name where results go: not part of a sweep grid (the sweep decides them)
PLACEMENT = ("out", "run_id", "allow_stale")
#: CPU threads when --threads is not given (benchmarks/threads.py measures why)
DEFAULT_CPU_THREADS = 1


class OptionError(UserError, ValueError):
    """A run option is out of range; the message names the flag and the valid range."""


def _opt(help: str | Callable[[], str], *flags: str, min: int | None = None) -> dict[str, Any]:
    """A field's CLI metadata; ``help`` may be a function, called when the command is built, for help that lists
    what a registry holds (policies, backends, models, tasks) and so cannot fall behind it."""
    return {"help": help, "flags": flags, "min": min}


def _policies_help() -> str:
    return (f"Policy to run; repeat to compare: {' | '.join(registry())} (see `dynts-bench policies`). Default: every "
            "baseline (+ oracle, and dynts with its shipped predictor, on the tiny reasoner).")


def _backends_help() -> str:
    return f"{' | '.join(BACKENDS)} (see `dynts-bench backends`)."


def _models_help() -> str:
    return f"Alias ({' | '.join(MODEL_ALIASES)}), local directory, .gguf file or hub id."


def _prompts_help() -> str:
    other = [f"{model}: {embedded_task(task).heldout_file}" for model, task in MODEL_TASKS.items() if task != "sum"]
    return (f"JSONL of {{id, prompt, answer}} (+ trace for replay); default: the held-out problems of the model's "
            f"embedded task ({'; '.join(other)}; every other model: {embedded_task('sum').heldout_file}).")


def _max_new_tokens_help() -> str:
    longer = [f"{m}: {default_max_new_tokens(m, DEFAULT_MAX_NEW_TOKENS)}" for m in MODEL_TASKS
              if default_max_new_tokens(m, DEFAULT_MAX_NEW_TOKENS) != DEFAULT_MAX_NEW_TOKENS]
    return (f"Generation limit (default {DEFAULT_MAX_NEW_TOKENS}{''.join('; ' + x for x in longer)}; "
            "tasks: their YAML's).")


def _tasks_help() -> str:
    return f"A benchmark task, run through lm-eval: {' | '.join(task_names())} (see `dynts-bench tasks`)."


def _policy_args_help() -> str:
    return f"Policy option key=value or policy.key=value; repeatable. {options_help()}"


@dataclass(frozen=True)
class RunOptions:
    policy: tuple[str, ...] = field(default=(), metadata=_opt(_policies_help, "--policy", "-p"))
    backend: str = field(default="transformers", metadata=_opt(_backends_help))
    model: str = field(default=DEFAULT_MODEL, metadata=_opt(_models_help))
    prompts: Optional[Path] = field(default=None, metadata=_opt(_prompts_help))
    protocol: str = field(default="generate", metadata=_opt(
        "generate: the model writes its own trace. replay: force the prompts' reference traces (any model), "
        "then let it answer; reports KL / top-1 agreement with the full cache."))
    task: Optional[str] = field(default=None, metadata=_opt(_tasks_help))
    data_dir: Optional[Path] = field(default=None, metadata=_opt(
        "Read the task's data from DIR/<task>.jsonl (offline)."))
    samples: int = field(default=1, metadata=_opt(
        "Samples per problem (Pass@k, Maj@k); use with --temperature.", min=1))
    limit: Optional[int] = field(default=None, metadata=_opt(
        "N prompts / problems (tasks: a seeded subset).", min=1))
    mode: str = field(default="budget", metadata=_opt(
        "Schedule: 'budget' (fixed KV budget) or 'paper' (trigger + ratio)."))
    budget: Optional[int] = field(default=96, metadata=_opt("KV budget in tokens, prompt included (budget mode)."))
    interval: int = field(default=16, metadata=_opt("Compress when the cache reaches budget + interval (budget mode)."))
    window: int = field(default=32, metadata=_opt("Most recent tokens that are always kept."))
    trigger_len: Optional[int] = field(default=None, metadata=_opt("KV length that triggers compression (paper mode)."))
    ratio: float = field(default=0.4, metadata=_opt(
        "Fraction of thinking tokens kept at each compression (paper mode)."))
    evict_prompt: bool = field(default=False, metadata=_opt("Allow prompt tokens to be evicted.", "--evict-prompt"))
    predictor: Optional[Path] = field(default=None, metadata=_opt(
        "DynTS importance predictor directory (for --policy dynts)."))
    policy_arg: tuple[str, ...] = field(default=(), metadata=_opt(_policy_args_help, "--policy-arg"))
    max_new_tokens: Optional[int] = field(default=None, metadata=_opt(_max_new_tokens_help, min=1))
    temperature: float = field(default=0.0, metadata=_opt("0 = greedy."))
    top_p: float = field(default=1.0, metadata=_opt(""))
    top_k: int = field(default=0, metadata=_opt("0 = off."))
    seed: int = field(default=0, metadata=_opt("Run seed; each sample's seed derives from it and the sample id."))
    stop: tuple[str, ...] = field(default=(), metadata=_opt("Stop string; repeatable.", "--stop"))
    dtype: str = field(default="float32", metadata=_opt("float32 | bfloat16 | float16."))
    device: str = field(default="cpu", metadata=_opt("cpu or cuda[:N]."))
    batch_size: int = field(default=32, metadata=_opt("Sequences decoded together.", min=1))
    tensor_parallel: int = field(default=1, metadata=_opt(
        "Tensor-parallel ranks, each holding 1/N of the KV heads (--backend vllm; on CPU one core per rank).",
        min=1))
    chat: bool = field(default=True, metadata=_opt("Wrap prompts in the tokenizer's chat template."))
    threads: Optional[int] = field(default=None, metadata=_opt(
        "CPU threads for torch (default 1 on CPU: fastest and robust on a shared machine, see "
        "benchmarks/threads.py); recorded in every result.", min=1))
    out: Path = field(default=Path("results/runs"), metadata=_opt("Root of the result directories."))
    run_id: Optional[str] = field(default=None, metadata=_opt(
        "Directory name (default: policy + config hash); one policy only."))
    allow_stale: bool = field(default=False, metadata=_opt(
        "Reuse or resume a run directory that other code made (refused by default).", "--allow-stale"))

    def __post_init__(self) -> None:
        for f in fields(self):
            minimum = f.metadata.get("min")
            value = getattr(self, f.name)
            if minimum is not None and value is not None and value < minimum:
                raise OptionError(f"--{_flag(f.name)} must be >= {minimum}, got {value}")
        if self.task is not None and self.prompts is not None:
            raise PromptFileError("--task and --prompts are alternatives: pass one of them")
        if self.data_dir is not None and self.task is None:
            raise PromptFileError("--data-dir is for --task: pass the task whose data it holds")
        if self.protocol not in PROTOCOLS:
            raise PromptFileError(f"unknown --protocol {self.protocol!r}: use generate or replay")
        if self.protocol == "replay" and self.task is not None:
            raise PromptFileError("--protocol replay forces tiny-reasoner traces: use --prompts FILE, not --task")
        if self.dtype not in DTYPES:
            raise OptionError(f"unknown --dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise OptionError(f"unknown --device {self.device!r}: use cpu or cuda[:N]")
        if self.tensor_parallel > 1 and self.backend != "vllm":
            raise OptionError(f"--tensor-parallel {self.tensor_parallel}: only --backend vllm runs tensor-parallel "
                              f"here ({self.backend} runs one rank): drop it or use --backend vllm")
        if self.run_id and len(set(self.policy)) > 1:
            raise ResultsError("--run-id names one directory: use it with a single --policy")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "options") -> RunOptions:
        """Options from text-ish values (a grid file, lm-eval ``--model_args``): unknown keys and values of the
        wrong type are one-line ``DataError``s naming ``where``."""
        known = {f.name: f for f in fields(cls)}
        typed: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise DataError(f"{where}: unknown option {key!r} (valid: {', '.join(known)})")
            typed[key] = _coerce(key, field_type(key), value, where)
        return cls(**typed)

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, strings): what a sweep records for a cell."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else str(value) if isinstance(value, Path) else value
        return out

    def check_device(self) -> None:
        """Whether the asked-for device is here (not part of validation: a GPU grid is valid on a CPU machine)."""
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise OptionError(f"--device {self.device} asked for, but no CUDA GPU is visible: use --device cpu")

    def backend_kwargs(self) -> dict[str, Any]:
        """What ``backends.build_backend`` gets: the engine these options describe."""
        kwargs: dict[str, Any] = dict(model=self.model, dtype=self.dtype, device=self.device,
                                      batch_size=self.batch_size)
        if self.tensor_parallel > 1:
            kwargs["tensor_parallel"] = self.tensor_parallel
        return kwargs

    @property
    def engine_key(self) -> tuple[Any, ...]:
        """Cells with the same key can share one engine (a sweep builds each engine once)."""
        return (self.backend, self.model, self.dtype, self.device, self.batch_size, self.tensor_parallel)

    def apply_threads(self) -> int:
        """Set torch's intra-op threads for this run (CPU only); returns the count in force."""
        import torch

        if self.device == "cpu":
            torch.set_num_threads(self.threads or DEFAULT_CPU_THREADS)
        return torch.get_num_threads()

    @property
    def max_tokens(self) -> int:
        return self.max_new_tokens or default_max_new_tokens(self.model, DEFAULT_MAX_NEW_TOKENS)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def field_type(name: str) -> Any:
    return typing.get_type_hints(RunOptions)[name]


def _inner(hint: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) of ``Optional[X]``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}


def _coerce(key: str, hint: Any, value: Any, where: str) -> Any:
    base, optional = _inner(hint)
    if value is None:
        if optional:
            return None
        raise DataError(f"{where}: option {key} cannot be empty")
    if typing.get_origin(base) is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(str(_coerce(key, str, v, where)) for v in items)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError(value)
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if base is Path:
            if not isinstance(value, (str, Path)):
                raise ValueError(value)
            return Path(value)
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: option {key} must be {_TYPE_WORDS.get(base, base)}, got {value!r}") from None
    return value


def field_help(name: str) -> str:
    """A ``RunOptions`` field's help text, generated now where it lists a registry."""
    help = next(f for f in fields(RunOptions) if f.name == name).metadata.get("help") or ""
    return help() if callable(help) else help


def cli_parameters(only: Collection[str] | None = None) -> list[inspect.Parameter]:
    """``RunOptions`` as typer parameters: the ``run`` command's signature (``only``: a subset, e.g. ``serve``'s)."""
    import typer

    params = []
    for f in fields(RunOptions):
        if only is not None and f.name not in only:
            continue
        hint = field_type(f.name)
        base, _ = _inner(hint)
        default = f.default
        if typing.get_origin(base) is tuple:
            hint, default = list[str], []
        flags = f.metadata.get("flags") or ()
        option = typer.Option(default, *flags, help=field_help(f.name) or None)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=hint))
    return params
