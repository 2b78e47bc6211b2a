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


# --------------------------------------------------------------------------- import graph: no cycles
#: the project's import roots; every ``.py`` under them is a node of the graph
PACKAGES = ("zoo", "backends", "harness", "benchmarks", "tests")
#: function-level imports of our own modules that stay, each deferring a heavy or optional dependency:
#: (importing file or "*", imported module prefix) -> why
DEFERRED_IMPORTS = {
    ("*", "backends.vllm"): "the vllm backend imports vLLM, installed only in its own environment",
    ("*", "backends.sglang"): "the sglang backend imports SGLang, installed only in its own environment",
    ("backends/__init__.py", "backends.hf"): "the registry lists every backend without importing its engine",
    ("backends/hf/facts.py", "backends.hf"): "model loading (transformers model classes, GGUF conversion) only "
                                             "when a model directory must be made",
    ("backends/sglang/plugin.py", "backends.hf.facts"): "SGLang loads the plugin in every process it starts; the "
                                                        "tokenizer is read only once a policy is configured",
    ("harness/workloads/selection.py", "harness.workloads.lmeval_workload"): "lm-eval takes seconds to import; "
                                                                             "only --task runs need it",
    ("benchmarks/vllm_throughput.py", ""): "sets OMP_NUM_THREADS before anything imports torch",
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.Module):
    """Every import statement that can run: at module level or inside functions, but not under
    ``if TYPE_CHECKING:`` (a deferred import still makes a cycle, it only hides it until first call)."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        else:
            stack.extend(ast.iter_child_nodes(node))


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: set[str]) -> set[str]:
    """The project modules an import statement loads: ``from pkg import mod`` loads ``pkg.mod``, and every
    package above a module runs its ``__init__`` first."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = importer.split(".") if is_package else importer.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    # importing a.b.c runs a/__init__ and a/b/__init__ first, unless the importer is inside them already
    loaded = {".".join(name.split(".")[:i]) for name in names for i in range(1, name.count(".") + 2)}
    inside = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 2)}
    return {name for name in loaded - inside if name in modules}


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in it, outside ``TYPE_CHECKING``)."""
    files = {module_name(p, root): p for package in packages for p in sorted((root / package).rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        edges: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            edges |= _targets(node, name, path.name == "__init__.py", set(files))
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colouring the path being walked)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_project_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph(ROOT))
    assert cycle is None, " -> ".join(cycle or [])


def _write_package(root: Path, name: str, modules: dict[str, str]) -> None:
    (root / name).mkdir()
    for module, source in {"__init__": "", **modules}.items():
        (root / name / f"{module}.py").write_text(source)


def test_an_injected_cycle_is_found(tmp_path: Path) -> None:
    """Temporary packages: a ring of imports (relative, under ``try``, inside a function); a cycle only through a
    package ``__init__`` that runs before its submodule; and a back edge under ``TYPE_CHECKING``, which is none."""
    _write_package(tmp_path, "ring", {"a": "from ring.b import thing\n",
                                      "b": "try:\n    from . import c\nexcept ImportError:\n    c = None\n",
                                      "c": "def late():\n    import ring.a\n"})
    _write_package(tmp_path, "pkg", {"__init__": "from pkg.heavy import H\n", "heavy": "from other.x import X\n",
                                     "light": "L = 1\n"})
    _write_package(tmp_path, "other", {"x": "from pkg.light import L\n"})
    _write_package(tmp_path, "typed", {"x": "from typed.y import Y\n",
                                       "y": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                            "    from typed.x import X\n"})

    cycle = find_cycle(import_graph(tmp_path, ("ring",)))
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"ring.a", "ring.b", "ring.c"}
    through_init = find_cycle(import_graph(tmp_path, ("pkg", "other")))
    assert through_init is not None and set(through_init) == {"pkg", "pkg.heavy", "other.x"}
    assert find_cycle(import_graph(tmp_path, ("typed",))) is None


# --------------------------------------------------------------------------- function-level imports
def _deferred_import_allowed(path: str, module: str) -> bool:
    return any(where in ("*", path) and module.startswith(prefix) for where, prefix in DEFERRED_IMPORTS)


def function_level_imports(root: Path, packages: tuple[str, ...]) -> list[tuple[str, int, str]]:
    """(file, line, module) of every import of a project module inside a function."""
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for fn in ast.walk(ast.parse(path.read_text())):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        modules = [node.module]
                    elif isinstance(node, ast.Import):
                        modules = [alias.name for alias in node.names]
                    else:
                        continue
                    found += [(str(path.relative_to(root)), node.lineno, m) for m in modules
                              if m.split(".")[0] in PACKAGES]
    return found


def test_our_modules_are_imported_at_module_level() -> None:
    """An import inside a function hides a dependency (and the cycles it makes) from a reader; only the listed
    few that defer a heavy or optional dependency stay."""
    hidden = [f"{path}:{line} {module}" for path, line, module in
              function_level_imports(ROOT, ("zoo", "backends", "harness", "benchmarks"))
              if not _deferred_import_allowed(path, module)]
    assert not hidden, hidden


def test_a_hidden_import_is_found(tmp_path: Path) -> None:
    _write_package(tmp_path, "harness", {"late": "def f():\n    from harness.results import rundir\n"})
    assert function_level_imports(tmp_path, ("harness",)) == [("harness/late.py", 2, "harness.results")]


# --------------------------------------------------------------------------- module names
#: stems that several modules share because each is the same role in a parallel folder (one per engine / layer)
SHARED_STEMS = {
    "backend": "each engine folder's Backend",
    "checks": "each paged engine's version pin",
    "serve": "each paged engine's server command",
    "state": "each paged engine's per-request state",
    "runtime": "each paged engine's process setup",
    "base": "the contract of its layer (zoo.base: Policy; backends.base: Backend)",
}


def test_no_two_modules_share_a_stem_for_different_things() -> None:
    """A name says what a module holds, wherever it is imported from: ``check`` (the gate) beside ``checks``
    (engine pins), or two ``prompts.py`` holding different things, make a reader open both."""
    by_stem: dict[str, list[str]] = {}
    for package in ("zoo", "backends", "harness", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            if path.stem not in ("__init__", "__main__") and "cpu_shim" not in path.parts:
                by_stem.setdefault(path.stem, []).append(str(path.relative_to(ROOT)))
    shared = {stem: sorted(paths) for stem, paths in by_stem.items() if len(paths) > 1 and stem not in SHARED_STEMS}
    assert not shared, shared
