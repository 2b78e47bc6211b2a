"""Plain JSONL prompt files: one object per line with ``prompt`` (or ``question``), optional ``id`` and ``answer``.

The input of ``dynts-bench run --prompts`` (the default: the held-out problems of the model's embedded task,
``harness.runs.catalog.default_prompts``) and of the predictor pipeline; benchmark tasks (``--task``) come from
lm-eval instead (``lmeval_tasks``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from harness.tinyreasoner.tasks import embedded_task
from zoo.errors import UserError


class PromptFileError(UserError, ValueError):
    """The prompt file cannot be used; the message names the file, the line and the fix."""


class DataError(UserError, ValueError):
    """A benchmark dataset cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class PromptItem:
    id: str
    prompt: str
    answer: str | None = None


def default_prompts_path(task: str = "sum") -> Path:
    """The shipped held-out problems of embedded task ``task`` (the first task's unless told)."""
    return Path(str(files("harness") / "data" / embedded_task(task).heldout_file))


def load_prompts(path: Path, limit: int | None = None) -> list[PromptItem]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"cannot read prompts file {path}: {exc.__class__.__name__}: {exc}") from None
    items: list[PromptItem] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{path}:{number}: not valid JSON ({exc.msg}); one JSON object per line") from None
        if not isinstance(row, dict):
            raise PromptFileError(f"{path}:{number}: expected a JSON object with a 'prompt' field")
        prompt = row.get("prompt", row.get("question"))
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptFileError(f"{path}:{number}: missing a non-empty 'prompt' (or 'question') string")
        item_id = str(row.get("id", number))
        if item_id in seen:
            raise PromptFileError(f"{path}:{number}: duplicate id {item_id!r}; ids must be unique")
        seen.add(item_id)
        answer = row.get("answer")
        items.append(PromptItem(item_id, prompt, None if answer is None else str(answer)))
    if not items:
        raise PromptFileError(f"{path} holds no prompts")
    return items[:limit] if limit is not None else items
