"""Loaders, prompts and scoring shared by the project's lm-eval task YAMLs (``!function utils.*``).

Each task names its hub dataset in ``dataset_kwargs``; ``dynts-bench run --data-dir DIR`` adds ``data_dir`` and
the loader reads ``DIR/<task>.jsonl`` instead, so runs work offline. Rows are normalised to ``id``,
``problem``, ``answer`` (and ``choices`` for multiple choice) whatever the source's field names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.scoring.answers import score
from harness.scoring.passk import majority_correct, pass_at_k
from harness.workloads.prompt_file import DataError, default_prompts_path

R1_MATH = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
R1_CHOICE = (
    "{problem}\n\n{options}\n\nPlease reason step by step, and put the letter of your final answer "
    "(A, B, C or D) within \\boxed{{}}."
)
LETTERS = "ABCD"


def _first(row: dict, *names: str) -> Any:
    for name in names:
        if row.get(name) not in (None, ""):
            return row[name]
    return None


def normalise(row: dict, index: int, kind: str, source: str) -> dict:
    """One benchmark row in our field names (``id``, ``problem``, ``answer``, ``choices``)."""
    problem = _first(row, "problem", "question", "Question", "prompt")
    if problem is None:
        raise DataError(f"{source}: row {index + 1} has no problem/question field")
    item_id = str(_first(row, "id", "unique_id", "ID", "idx") or index)
    if kind == "choice":
        choices = row.get("choices")
        if choices is None:  # GPQA layout: one correct and three incorrect answers, shuffled per question
            correct = _first(row, "Correct Answer", "correct_answer")
            wrong = [row.get(f"Incorrect Answer {i}") for i in (1, 2, 3)]
            if correct is None or None in wrong:
                raise DataError(f"{source}: row {index + 1} needs 'choices'+'answer' or the GPQA answer fields")
            choices = [str(correct), *map(str, wrong)]
            random.Random(f"gpqa:{item_id}:{problem}").shuffle(choices)
            answer = LETTERS[choices.index(str(correct))]
        else:
            answer = str(_first(row, "answer", "label")).strip().upper()
        return {"id": item_id, "problem": str(problem).strip(), "choices": list(choices), "answer": answer}
    answer = _first(row, "answer", "final_answer", "solution")
    if answer is None:
        raise DataError(f"{source}: row {index + 1} has no answer field")
    return {"id": item_id, "problem": str(problem).strip(), "answer": str(answer).strip()}


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return rows


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub can be asked at all: not with ``HF_HUB_OFFLINE`` set, nor when its host does not answer
    within ``timeout_s`` (then ``datasets`` would retry for two minutes, printing a line per retry)."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def quiet_hub(offline: bool) -> Iterator[None]:
    """The hub's retry warnings silenced; with ``offline`` the hub and ``datasets`` read their local caches only."""
    import datasets
    from huggingface_hub import constants

    loggers = [logging.getLogger(n) for n in ("huggingface_hub", "datasets", "fsspec")]
    levels = [lg.level for lg in loggers]
    flags = (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    if offline:
        constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = flags


def load(
    name: str,
    kind: str,
    hub_path: str | None,
    hub_split: str = "test",
    hub_name: str | None = None,
    data_dir: str | None = None,
    embedded_task: str | None = None,
    **_: Any,
):
    """``custom_dataset`` for every task: local ``data_dir/<name>.jsonl``, the held-out problems of an embedded
    task shipped with the package (``embedded_task``, no hub dataset), or the hub dataset, normalised."""
    import datasets

    if data_dir is None and hub_path is None:  # shipped with the package (a tiny reasoner's problems)
        path = default_prompts_path(embedded_task or "sum")
        raw, source = _read_jsonl(path), str(path)
    elif data_dir is not None:
        path = Path(data_dir).expanduser() / f"{name}.jsonl"
        if not path.is_file():
            raise DataError(f"no {name}.jsonl in --data-dir {data_dir}: add it, or drop --data-dir to use the hub")
        raw, source = _read_jsonl(path), str(path)
    else:
        online = hub_reachable()
        try:
            with quiet_hub(offline=not online):
                raw = list(datasets.load_dataset(hub_path, hub_name, split=hub_split))
        except Exception as exc:  # noqa: BLE001 - any hub failure becomes one actionable line
            why = exc.__class__.__name__ if online else "the hub is unreachable and it is not in the local cache"
            raise DataError(
                f"cannot load {hub_path} from the hub ({why}); offline, pass --data-dir DIR with {name}.jsonl in it"
            ) from None
        source = hub_path
    rows = [normalise(row, i, kind, source) for i, row in enumerate(raw)]
    if not rows:
        raise DataError(f"{source} holds no rows")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def math_prompt(doc: dict) -> str:
    return R1_MATH.format(problem=doc["problem"])


def choice_prompt(doc: dict) -> str:
    options = "\n".join(f"({letter}) {text}" for letter, text in zip(LETTERS, doc["choices"]))
    return R1_CHOICE.format(problem=doc["problem"], options=options)


def _results(doc: dict, responses: list[str], kind: str) -> dict[str, float]:
    scored = [score(kind, doc["answer"], r) for r in responses]
    n, c = len(scored), sum(s.correct for s in scored)
    return {
        "pass_at_1": c / n,
        "pass_at_k": pass_at_k(n, c, n),
        "maj_at_k": float(majority_correct([s.extracted for s in scored], [s.correct for s in scored])),
        "truncated": sum(s.reason == "truncated" for s in scored) / n,
        "unclosed_thinking": sum(not s.thinking_closed for s in scored) / n,
    }


def process_math(doc: dict, results: list) -> dict[str, float]:
    """``results[0]`` holds all K responses of the doc (``take_first_k`` filter)."""
    return _results(doc, list(results[0]), "math")


def process_choice(doc: dict, results: list) -> dict[str, float]:
    return _results(doc, list(results[0]), "choice")


def bare_prompt(doc: dict) -> str:
    return doc["problem"]


def process_number(doc: dict, results: list) -> dict[str, float]:
    return _results(doc, list(results[0]), "number")
