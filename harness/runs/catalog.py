"""What the project ships for its own models, and the default comparison a model gets.

A policy declares what model-specific artefact it needs (``Policy.requires``: ``"predictor"`` for DynTS, the
tiny-reasoner task's vocabulary for the oracle). This catalog says which shipped model provides which, so the
default comparison of ``dynts-bench run`` is every baseline plus every policy whose artefact comes with the
model -- no hand-kept list of names.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from harness.runs.fingerprints import model_fingerprint, predictor_fingerprint
from harness.tinyreasoner.tasks import embedded_task
from harness.workloads.prompt_file import default_prompts_path
from zoo import registry
from zoo.predictor import CONFIG

PREDICTOR = "predictor"
TASK_VOCABULARY = "tiny-reasoner task vocabulary"

#: shipped predictors by model alias, as package resources of ``harness``
SHIPPED_PREDICTORS = {"tiny-reasoner": "tinyreasoner/predictor",
                      "tiny-reasoner-control": "tinyreasoner/control-predictor",
                      "tiny-reasoner-program": "tinyreasoner/program-predictor",
                      "smollm2-135m": "predictors/smollm2-135m"}
#: shipped models by alias -> the embedded task they were trained on (``harness.tinyreasoner.tasks``)
MODEL_TASKS = {"tiny-reasoner": "sum", "tiny-reasoner-control": "sum", "tiny-reasoner-program": "program"}
#: models whose tokenizer has an embedded task's words as single tokens (what the oracle reads)
TASK_VOCABULARY_MODELS = frozenset(MODEL_TASKS)


def model_task(model_id: str) -> str | None:
    """The embedded task a shipped tiny reasoner was trained on; None for any other model."""
    return MODEL_TASKS.get(model_id)


def default_prompts(model_id: str) -> Path:
    """What ``run`` reads without ``--prompts``: the held-out problems of the model's embedded task, and the first
    task's for every other model."""
    return default_prompts_path(model_task(model_id) or "sum")


def default_max_new_tokens(model_id: str, fallback: int) -> int:
    """The generation limit without ``--max-new-tokens``: one that covers the model's task's longest trace, else
    ``fallback``."""
    task = model_task(model_id)
    return fallback if task is None else max(fallback, embedded_task(task).max_new_tokens)


def shipped_predictor(model_id: str) -> Path | None:
    """The packaged DynTS predictor for ``model_id``, if the project ships one."""
    if model_id not in SHIPPED_PREDICTORS:
        return None
    path = Path(str(files("harness") / SHIPPED_PREDICTORS[model_id]))
    return path if (path / CONFIG).is_file() else None


def provided(model_id: str) -> frozenset[str]:
    """The model-specific artefacts that come ready with ``model_id``."""
    found = set()
    if shipped_predictor(model_id) is not None:
        found.add(PREDICTOR)
    if model_id in TASK_VOCABULARY_MODELS:
        found.add(TASK_VOCABULARY)
    return frozenset(found)


def baselines() -> list[str]:
    """Policies of the default comparison that run on any model (no artefact needed)."""
    return [name for name, cls in registry().items() if cls.in_default_comparison and cls.requires is None]


def default_policies(model_id: str) -> list[str]:
    """The default comparison on ``model_id``: every baseline, then the policies whose artefact it ships."""
    ready = provided(model_id)
    return [name for name, cls in registry().items()
            if cls.in_default_comparison and (cls.requires is None or cls.requires in ready)]


def shipped_artefacts(model_id: str) -> dict[str, str]:
    """Content hashes of what ships for ``model_id`` -- its weights and, where one ships, its DynTS predictor -- as
    run configs record them (``artefacts``)."""
    found = {"model": model_fingerprint(model_id)}
    predictor = shipped_predictor(model_id)
    if predictor is not None:
        found[PREDICTOR] = predictor_fingerprint(predictor)
    return found
