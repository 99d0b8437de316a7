"""The package's structure: imports only go down the layers, binaries are thin.

A module may import only modules of a lower layer (never its own or a higher one), which also
makes the import graph acyclic; a new module must be given its layer here. Library modules never
read flags; only binaries do, and no binary imports another.
"""

from __future__ import annotations

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tfmeta")

# Lowest first. Within a layer, modules do not import each other.
LAYERS = [
    ["version", "errors", "choices", "signatures", "functional", "losses", "preemption",
     "input_transform"],
    ["config", "layers", "distribute", "omniglot_builder", "sinusoid", "cli", "class_listing"],
    ["workdir", "batched", "grouping", "image_decode", "benchmark_splits"],
    ["task_batch", "inner_loop", "class_store", "tfds_source"],
    ["meta_learner", "remat", "benchmark_sources"],
    ["maml", "reptile", "imaml", "image_sources"],
    ["models", "omniglot", "episodes"],
    ["tasks", "image_folders", "demo_data"],
    ["experiment", "serving_client", "reporting", "evaluation_results"],
    ["evaluation", "exporter"],
    ["trainer", "keras"],
    ["__init__"],
]
BINARIES = ["train", "evaluate", "export", "adapt", "report", "demo"]
BINARY_MAX_LINES = 110
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
RANK.update({name: len(LAYERS) for name in BINARIES})


def _modules() -> list[str]:
    return sorted(f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py"))


def _source(module: str) -> str:
    with open(os.path.join(PACKAGE, module + ".py"), encoding="utf-8") as f:
        return f.read()


def imports(module: str) -> set[str]:
    """tfmeta modules that ``module`` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(_source(module))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "tfmeta":
                    found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "tfmeta":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from tfmeta import a, b
                found.update(alias.name for alias in node.names)
    return found - {module}


def test_every_module_has_a_layer():
    missing = [m for m in _modules() if m not in RANK]
    assert not missing, f"give these modules a layer in LAYERS or BINARIES: {missing}"


@pytest.mark.parametrize("module", _modules())
def test_imports_only_go_down(module):
    if module not in RANK:
        pytest.skip("no layer (see test_every_module_has_a_layer)")
    upward = sorted(m for m in imports(module) if m in RANK and RANK[m] >= RANK[module])
    assert not upward, f"tfmeta.{module} (layer {RANK[module]}) imports {upward} of the same or a " \
                       f"higher layer ({[RANK[m] for m in upward]})"


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
    graph = {m: imports(m) & set(_modules()) for m in _modules()}
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"cli": {"export"}, "export": {"export_main"}, "export_main": {"cli"}}) \
        == ["cli", "export", "export_main", "cli"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", [m for m in _modules() if m not in BINARIES])
def test_library_modules_read_no_flags(module):
    source = _source(module)
    assert "flags.DEFINE" not in source, \
        f"tfmeta.{module} is a library module: flags belong in the binaries {BINARIES}"
    if module != "cli":  # the binaries' shell parses them
        assert "FLAGS" not in source, f"tfmeta.{module} reads flags"


@pytest.mark.parametrize("binary", BINARIES)
def test_binaries_are_thin(binary):
    source = _source(binary)
    lines = len(source.splitlines())
    assert lines <= BINARY_MAX_LINES, f"tfmeta/{binary}.py has {lines} lines; move work into a " \
                                      "library module"
    assert "def _define_flags" not in source, "flags are defined at module top"
