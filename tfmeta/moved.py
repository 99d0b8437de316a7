"""Module paths of tfmeta 0.3 (one flat folder), importable for one more release with a warning.

``import tfmeta.maml`` still works and gives the very module ``tfmeta.core.maml`` (so private names,
``isinstance`` checks and monkeypatching behave as before), after a ``DeprecationWarning`` that
names the new path. The public names (``tfmeta.MAML``, ``tfmeta.models.conv4``, ...) are not
deprecated: they are attributes of the package, not module paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

# Old module name -> its new home (0.4). Removed in the release after 0.4.
MOVED = {
    **{m: "base" for m in ("version", "errors", "choices", "signatures", "input_transform",
                           "distribute")},
    **{m: "core" for m in ("functional", "losses", "layers", "batched", "grouping", "task_batch",
                           "inner_loop", "meta_learner", "remat", "maml", "reptile", "imaml",
                           "models")},
    **{m: "data" for m in ("class_listing", "image_decode", "benchmark_splits", "tfds_source",
                           "class_store", "benchmark_sources", "image_sources", "omniglot_builder",
                           "omniglot", "episodes", "sinusoid", "image_folders")},
    **{m: "run" for m in ("config", "workdir", "preemption", "tasks", "experiment", "evaluation",
                          "evaluation_results", "trainer", "reporting", "demo_data", "cli",
                          "exporter")},
    **{m: "serving" for m in ("serving_client",)},
}


def new_path(old: str) -> str | None:
    """``tfmeta.<tier>.<name>`` for an old flat path ``tfmeta.<name>``, else None."""
    prefix, _, name = old.partition(".")
    if prefix != "tfmeta" or name not in MOVED:
        return None
    return f"tfmeta.{MOVED[name]}.{name}"


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module that now lives at the new one."""

    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.target}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its new name


class OldPaths(importlib.abc.MetaPathFinder):
    """Finds ``tfmeta.<old name>`` and answers with the moved module."""

    def find_spec(self, fullname, path=None, target=None):
        target_name = new_path(fullname)
        if target_name is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(target_name))


def install() -> None:
    """Adds the finder once (importing ``tfmeta`` calls this)."""
    if not any(isinstance(f, OldPaths) for f in sys.meta_path):
        sys.meta_path.append(OldPaths())
