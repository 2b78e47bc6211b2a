"""``dynts-bench policies``' grouped overview: built from the classes, so a new policy file lands in its group."""

from __future__ import annotations

from dataclasses import dataclass

from zoo import registry
from zoo.base import FAMILIES, Policy
from zoo.overview import KVPRESS_ABSENT, policy_overview


def test_every_registered_policy_declares_a_known_family() -> None:
    undeclared = {name: cls.family for name, cls in registry().items() if cls.family not in FAMILIES}
    assert not undeclared


def test_the_overview_lists_each_policy_under_its_family_heading() -> None:
    lines = policy_overview(registry()).splitlines()
    heading = None
    seen: dict[str, str] = {}
    for line in lines:
        if not line.startswith(" ") and line.endswith(":"):
            heading = line[:-1]
        elif line.startswith("  ") and not line.startswith("    "):
            seen[line.split()[0].rstrip(":")] = heading
    assert {name: seen.get(name) for name in registry()} == {name: cls.family for name, cls in registry().items()}


def test_a_new_policy_class_is_grouped_with_its_costs_and_kvpress_counterpart() -> None:
    @dataclass
    class Probe(Policy):
        name = "probe"
        family = "key-only"
        step_cost = "nothing extra"
        compression_cost = "one dot product per key"
        kvpress = "ProbePress"

    text = policy_overview({"probe": Probe})
    assert "key-only:\n  probe  (kvpress ProbePress)\n" in text
    assert "at compression: one dot product per key" in text and "every step: nothing extra" in text


def test_no_kvpress_press_is_both_here_and_listed_absent() -> None:
    here = {cls.kvpress for cls in registry().values() if cls.kvpress}
    assert here >= {"KnormPress", "KeyDiffPress", "CURPress", "ObservedAttentionPress", "SnapKVPress", "TOVAPress"}
    assert not here & set(KVPRESS_ABSENT)
    text = policy_overview(registry())
    assert all(f"  {press}: " in text for press in KVPRESS_ABSENT)
