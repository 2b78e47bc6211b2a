"""The policy zoo: one policy per module, all behind ``zoo.base.Policy``.

Policies are registered by name here; other packages add theirs through the ``dynts_bench.policies`` entry
point group (``name = "package.module:Class"``) -- the project's own oracle, which reads the tiny-reasoner task's
rules, is registered that way from ``harness``, so that ``zoo`` imports nothing above it. A policy instance is
built per run (never shared).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import typing
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from zoo.base import Policy, PolicyError
from zoo.curdkv import CurDKV
from zoo.dynts import DynTS
from zoo.full import FullCache
from zoo.h2o import HeavyHitterOracle
from zoo.keydiff import KeyDiff
from zoo.knorm import KNorm
from zoo.observed import ObservedAttention
from zoo.overview import policy_overview
from zoo.random import RandomEviction
from zoo.rkv import RKV
from zoo.sepllm import SepLLM
from zoo.snapkv import SnapKV
from zoo.streamingllm import StreamingLLM
from zoo.tova import TOVA
from zoo.window import LocalWindow

_BUILTIN: tuple[type[Policy], ...] = (
    FullCache,
    LocalWindow,
    StreamingLLM,
    SepLLM,
    HeavyHitterOracle,
    SnapKV,
    TOVA,
    RKV,
    ObservedAttention,
    KNorm,
    KeyDiff,
    CurDKV,
    RandomEviction,
    DynTS,
)


_log = logging.getLogger(__name__)
_REPORTED: set[str] = set()  # broken plugins already warned about in this process


def _load_plugin(ep: EntryPoint) -> type[Policy] | None:
    """The policy class an entry point names, or None after one warning line: a broken third-party plugin
    (an import error, a missing name, not a ``Policy``) must not take every command down with it."""
    try:
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise TypeError(f"{cls!r} is not a zoo.base.Policy subclass")
    except Exception as exc:  # noqa: BLE001 - whatever a plugin raises, it is skipped, not fatal
        if ep.name not in _REPORTED:
            _REPORTED.add(ep.name)
            _log.warning("policy plugin %r (%s) skipped: %s: %s", ep.name, ep.value, type(exc).__name__, exc)
        return None
    return cls


def registry() -> dict[str, type[Policy]]:
    """Every available policy by name: built-ins, then the entry-point plugins that load."""
    found = {cls.name: cls for cls in _BUILTIN}
    for ep in entry_points(group="dynts_bench.policies"):
        if ep.name not in found and (cls := _load_plugin(ep)) is not None:
            found[ep.name] = cls
    return found


def describe(cls: type[Policy]) -> str:
    """First sentence of the policy's docstring: its one-line description."""
    doc = " ".join((inspect.getdoc(cls) or "").split())
    return doc.split(". ")[0].rstrip(".") + "."


def option_help(cls: type[Policy]) -> dict[str, str]:
    """Each public option's meaning, from its dataclass field (``zoo.base.option``); "" where none is given."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)
            if f.init and not f.name.startswith("_")}


def options_help() -> str:
    """Every registered policy's options, defaults and meanings in one line: ``--policy-arg``'s help."""
    parts = [f"{name}.{key}={default}: {option_help(cls)[key]}"
             for name, cls in registry().items() for key, default in policy_options(cls).items()]
    return "; ".join(parts) + "."


def policy_options(cls: type[Policy]) -> dict[str, Any]:
    """Public options of a policy class with their defaults."""
    return {
        f.name: (None if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(cls)
        if f.init and not f.name.startswith("_")
    }


def _coerce(cls: type[Policy], key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    hint = typing.get_type_hints(cls).get(key)
    optional = [a for a in typing.get_args(hint) if a is not type(None)]
    if type(None) in typing.get_args(hint) and len(optional) == 1:  # ``int | None``: "none" or an int
        if value.lower() == "none":
            return None
        hint = optional[0]
    try:
        if hint is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if hint is int:
            return int(value)
        if hint is float:
            return float(value)
    except ValueError:
        raise PolicyError(f"{cls.name} option {key} must be {hint.__name__}, got {value!r}") from None
    return value


def build_policy(name: str, **options: Any) -> Policy:
    """A fresh policy instance; unknown names or options raise ``PolicyError`` listing the valid ones."""
    known = registry()
    if name not in known:
        raise PolicyError(f"unknown policy {name!r}: choose one of {', '.join(known)}")
    cls = known[name]
    valid = policy_options(cls)
    for key in options:
        if key not in valid:
            choices = ", ".join(valid) or "none"
            raise PolicyError(f"policy {name} has no option {key!r} (its options: {choices})")
    return cls(**{k: _coerce(cls, k, v) for k, v in options.items()})


__all__ = ["Policy", "PolicyError", "build_policy", "describe", "policy_options", "policy_overview", "registry"]
