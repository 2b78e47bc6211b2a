"""Help that cannot drift: every help text that lists choices is made from the registry that holds them, and
every policy option says what it means. Each test reads the help a user sees and compares it with the registry
itself (or, for tasks, with lm-eval's own index of the shipped task files)."""

from __future__ import annotations

import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from backends import BACKENDS
from backends.hf.loading import MODEL_ALIASES
from harness.cli import app
from harness.predictor_pipeline.labels import METHOD_HELP, METHODS
from zoo import option_help, policy_options, registry

runner = CliRunner()
WIDE = {"COLUMNS": "1000", "TERMINAL_WIDTH": "1000"}  # one line per option: no name is split by wrapping


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())  # the panel's borders and wrapping removed


def _option_line(text: str, flag: str) -> str:
    """The help of one option: from its flag to the next option's flag."""
    return re.split(r" --[a-z]", text.split(f" {flag} ", 1)[1], maxsplit=1)[0]


def test_run_help_lists_every_registered_policy() -> None:
    line = _option_line(_help("run"), "--policy")
    assert all(f" {name} " in f" {line} " for name in registry())


def test_run_help_lists_every_backend() -> None:
    assert all(name in _option_line(_help("run"), "--backend") for name in BACKENDS)


def test_run_help_lists_every_model_alias() -> None:
    line = _option_line(_help("run"), "--model")
    assert {"tiny-reasoner", "tiny-reasoner-control", "tiny-reasoner-program", "smollm2-135m"} <= set(MODEL_ALIASES)
    assert all(alias in line for alias in MODEL_ALIASES)


def test_run_help_lists_every_task_lm_eval_indexes() -> None:
    from harness.workloads.lmeval_tasks import shipped_tasks

    line = _option_line(_help("run"), "--task")
    assert all(name in line for name in shipped_tasks())


def test_run_help_gives_every_policy_options_meaning() -> None:
    line = _option_line(_help("run"), "--policy-arg")
    for name, cls in registry().items():
        for key, default in policy_options(cls).items():
            assert f"{name}.{key}={default}: {option_help(cls)[key]}" in line


@pytest.mark.parametrize("name", list(registry()))
def test_every_policy_option_has_a_meaning(name) -> None:
    cls = registry()[name]
    undocumented = [key for key, meaning in option_help(cls).items() if not meaning]
    assert not undocumented, f"give {name}'s {undocumented} a meaning: zoo.base.option(default, help)"


def test_policies_shows_each_option_with_its_meaning(monkeypatch) -> None:
    import harness.cli.list_policies

    monkeypatch.setattr(harness.cli.list_policies, "console", Console(width=1000, force_terminal=False))
    result = runner.invoke(app, ["policies"])
    assert result.exit_code == 0
    for cls in registry().values():
        for key, default in policy_options(cls).items():
            assert f"{key}={default}: {option_help(cls)[key]}" in result.output


@pytest.mark.parametrize("command, flag", [("label", "--method"), ("train-predictor", "--label-method"),
                                           ("eval-predictor", "--label-method")])
def test_label_method_help_lists_every_method_with_its_meaning(command, flag) -> None:
    line = _option_line(_help(command), flag)
    assert {"copy", "later"} <= set(METHODS)
    assert all(f"{method}: {meaning}" in line for method, meaning in METHOD_HELP.items())
