"""The layering, checked on the imports: zoo <- backends <- harness, never back up a layer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
#: what each layer may import of ours
ALLOWED = {"zoo": {"zoo"}, "backends": {"zoo", "backends"}}


def _our_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & {"zoo", "backends", "harness"}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_import_runs_back_up_a_layer(layer: str) -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(_our_imports(p) - ALLOWED[layer])
                 for p in (ROOT / layer).rglob("*.py") if _our_imports(p) - ALLOWED[layer]}
    assert not offenders, offenders


def test_no_module_is_typed_against_a_backend_as_any() -> None:
    pattern = re.compile(r"\b(backend|engine)\s*:\s*Any\b")
    offenders = [str(p.relative_to(ROOT)) for layer in ("harness", "backends", "benchmarks")
                 for p in (ROOT / layer).rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders, offenders
