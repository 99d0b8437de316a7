"""The package's structure: tiers that import only downward, thin binaries, no import cycle.

Every module lives in a tier (a sub-package, or the top of the package for the binaries, the Keras
surface and the package itself). A tier may import only the tiers listed for it in ``MAY_IMPORT``;
within a tier the import graph has no cycle. Library modules never read flags; only binaries do,
and no binary imports another.
"""

from __future__ import annotations

import ast
import os

import pytest

from tests.helpers import REPO

PACKAGE = os.path.join(REPO, "tfmeta")

TIERS = ["base", "core", "data", "serving", "run"]
BINARIES = ["train", "evaluate", "export", "adapt", "report", "demo"]
# Top-level modules that are not binaries: the package and its old-path aliases. The Keras
# surface (tfmeta/keras/) is a tier of its own, over core and serving.
TOP = ["__init__", "moved"]
# Which tiers each tier may import (its own included). "bin": the binaries.
MAY_IMPORT = {
    "base": {"base"},
    "core": {"base", "core"},
    "data": {"base", "data"},
    "serving": {"base", "core", "data", "serving"},
    "run": {"base", "core", "data", "serving", "run"},
    "keras": {"base", "core", "serving", "keras"},
    "moved": {"moved"},
    "__init__": {"base", "moved", "__init__"},
    "bin": {"base", "core", "data", "serving", "run", "keras"},
}
BINARY_MAX_LINES = 110


def _modules() -> list[str]:
    """Every module as a dotted name below ``tfmeta`` ("core.maml", "train", "__init__", ...)."""
    found = []
    for name in sorted(os.listdir(PACKAGE)):
        path = os.path.join(PACKAGE, name)
        if name.endswith(".py"):
            found.append(name[:-3])
        elif os.path.isdir(path) and os.path.exists(os.path.join(path, "__init__.py")):
            found += [f"{name}.{f[:-3]}" for f in sorted(os.listdir(path)) if f.endswith(".py")]
    return found


def tier(module: str) -> str:
    """The tier of a dotted module name (binaries are "bin")."""
    if "." in module:
        return module.split(".")[0]
    return "bin" if module in BINARIES else module


def _source(module: str) -> str:
    with open(os.path.join(PACKAGE, *module.split(".")) + ".py", encoding="utf-8") as f:
        return f.read()


def imports(module: str) -> set[str]:
    """tfmeta modules that ``module`` imports anywhere (top level or inside functions)."""
    known = set(_modules())
    found = set()

    def add(dotted: str) -> None:
        # "tfmeta.core.maml" -> "core.maml"; "tfmeta.core" (a sub-package) -> "core.__init__".
        rest = dotted.split(".", 1)[1] if "." in dotted else "__init__"
        found.add(rest if rest in known else f"{rest}.__init__")

    for node in ast.walk(ast.parse(_source(module))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tfmeta":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "tfmeta":
                continue
            for alias in node.names:  # "from tfmeta.core import maml" imports tfmeta.core.maml
                candidate = f"{node.module}.{alias.name}"
                add(candidate if candidate.split(".", 1)[1] in known else node.module)
    return found - {module}


def test_every_module_has_a_tier():
    stray = [m for m in _modules() if tier(m) not in MAY_IMPORT]
    assert not stray, f"put these modules in a tier ({TIERS}) or name them in TOP/BINARIES: {stray}"


@pytest.mark.parametrize("module", _modules())
def test_imports_only_go_down(module):
    allowed = MAY_IMPORT.get(tier(module), set())
    upward = sorted(m for m in imports(module) if tier(m) not in allowed)
    assert not upward, f"tfmeta.{module} (tier {tier(module)}) imports {upward}; the " \
                       f"{tier(module)} tier may import only {sorted(allowed)}"


def test_no_binary_imports_another():
    for binary in BINARIES:
        others = sorted(m for m in imports(binary) if m in BINARIES)
        assert not others, f"tfmeta.{binary} imports the binaries {others}"


def test_the_tier_rule_catches_an_upward_import():
    assert "run" not in MAY_IMPORT["core"] and "serving" not in MAY_IMPORT["data"]
    assert "run" not in MAY_IMPORT["serving"] and "run" not in MAY_IMPORT["keras"]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (module -> imported modules) as a path, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        if state.get(m) == 1:
            return path[path.index(m):] + [m]
        if state.get(m) == 2:
            return None
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            cycle = visit(n, path + [m])
            if cycle:
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        cycle = visit(m, [])
        if cycle:
            return cycle
    return None


def test_the_import_graph_is_acyclic():
    modules = set(_modules())
    graph = {m: imports(m) & modules for m in modules}
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"cli": {"export"}, "export": {"export_main"}, "export_main": {"cli"}}) \
        == ["cli", "export", "export_main", "cli"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_reads_every_form():
    # The import forms the package uses resolve to the module, not to its sub-package.
    assert "core.maml" in imports("core.imaml") or "core.meta_learner" in imports("core.imaml")
    assert "run.cli" in imports("train")


@pytest.mark.parametrize("module", [m for m in _modules() if m not in BINARIES])
def test_library_modules_read_no_flags(module):
    source = _source(module)
    assert "flags.DEFINE" not in source, \
        f"tfmeta.{module} is a library module: flags belong in the binaries {BINARIES}"
    if module != "run.cli":  # the binaries' shell parses them
        assert "FLAGS" not in source, f"tfmeta.{module} reads flags"


@pytest.mark.parametrize("binary", BINARIES)
def test_binaries_are_thin(binary):
    source = _source(binary)
    lines = len(source.splitlines())
    assert lines <= BINARY_MAX_LINES, f"tfmeta/{binary}.py has {lines} lines; move work into a " \
                                      "library module"
    assert "def _define_flags" not in source, "flags are defined at module top"


@pytest.mark.parametrize("old", ["maml", "models", "exporter", "config", "class_store"])
def test_old_module_paths_still_import_with_a_warning(old):
    import importlib
    import sys
    import warnings

    from tfmeta import moved

    name = f"tfmeta.{old}"
    sys.modules.pop(name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(name)
    assert module is importlib.import_module(moved.new_path(name))
    assert any(issubclass(w.category, DeprecationWarning) and moved.new_path(name) in str(w.message)
               for w in caught), [str(w.message) for w in caught]


def test_every_old_path_has_its_module():
    from tfmeta import moved

    for old in moved.MOVED:
        assert os.path.exists(os.path.join(PACKAGE, *moved.new_path(f"tfmeta.{old}").split(".")[1:])
                              ) or os.path.exists(os.path.join(
                                  PACKAGE, *moved.new_path(f"tfmeta.{old}").split(".")[1:]) + ".py"), old
