"""Third-party policies arrive through the ``dynts_bench.policies`` entry points; one that is broken is skipped with
one warning line, and every other policy (and command) still works."""

from __future__ import annotations

import logging
from pathlib import Path

from typer.testing import CliRunner

import zoo
from harness.cli import app
from zoo import registry
from zoo.window import LocalWindow

ENTRY_POINTS = """[dynts_bench.policies]
ghost = no_such_module_for_dynts:Ghost
notapolicy = json:loads
fine = fine_policy_plugin:Fine
"""


def _install_plugins(site: Path) -> None:
    """A distribution on ``site`` with a missing module, a non-policy and a working policy."""
    dist = site / "dynts_test_plugins-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dynts-test-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "fine_policy_plugin.py").write_text("from zoo.window import LocalWindow\n\n\n"
                                                "class Fine(LocalWindow):\n    name = 'fine'\n")


def test_broken_plugins_are_skipped_with_one_warning_each(tmp_path, monkeypatch, caplog) -> None:
    _install_plugins(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(zoo, "_REPORTED", set())
    with caplog.at_level(logging.WARNING, logger="zoo"):
        found = registry()
        again = registry()
    assert found["fine"].__name__ == "Fine" and issubclass(found["fine"], LocalWindow)
    assert "ghost" not in found and "notapolicy" not in found and "window" in found and "dynts" in found
    assert set(again) == set(found)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2, warned  # once per broken plugin, not once per registry() call
    assert "'ghost'" in warned[0] + warned[1] and "ModuleNotFoundError" in " ".join(warned)
    assert any("'notapolicy'" in w and "not a zoo.base.Policy subclass" in w for w in warned)


def test_a_broken_plugin_does_not_stop_a_command(tmp_path, monkeypatch, caplog) -> None:
    _install_plugins(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(zoo, "_REPORTED", set())
    with caplog.at_level(logging.WARNING, logger="zoo"):
        result = CliRunner().invoke(app, ["policies"])
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "fine" in result.output.split() and "window" in result.output.split()
    assert sorted(r.getMessage().split("(")[0] for r in caplog.records) == ["policy plugin 'ghost' ",
                                                                            "policy plugin 'notapolicy' "]
