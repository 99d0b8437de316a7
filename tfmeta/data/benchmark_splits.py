"""The standard few-shot benchmarks' published class splits, shipped in ``tfmeta/data/splits/*.json``.

One file per benchmark, each taken from the file its authors (or a widely used copy) published and
citing it: ``{"name", "title", "source": "<paper> — <repository file URLs at a commit>",
"counts": {split: n}, "splits": {"train": [...], "validation": [...], "test": [...]}}`` plus what
the benchmark needs:

==============  =========================================================================
miniimagenet    64/16/20 ImageNet wnids (Ravi & Larochelle 2017); 600 images per class, 84x84
tieredimagenet  351/97/160 wnids in 20/6/8 ImageNet categories (Ren et al. 2018):
                ``category_splits``, ``class_category``, ``categories`` and ``class_names``
                (WordNet words), the images per split
cifarfs         64/16/20 CIFAR-100 fine class names (Bertinetto et al. 2019), as in TFDS
                ``cifar100``'s ``label``
fc100           CIFAR-100 superclasses 12/4/4 (Oreshkin et al. 2018), ``superclass_splits``
                and ``superclasses`` (superclass -> its 5 fine classes); ``splits`` holds the
                60/20/20 fine classes
cub             CUB-200-2011 class folders 100/50/50 by Chen et al. 2019's rule
                (``split_rule``), e.g. ``001.Black_footed_Albatross``
==============  =========================================================================

:func:`load` checks each file when it reads it (counts, disjoint splits, the benchmark's own
invariants), so an edited or damaged list fails with a :class:`SplitListError` instead of
silently changing a benchmark. :func:`check_split_classes` and :func:`check_pool` compare what a
reader found with the list.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from tfmeta.base.choices import BENCHMARKS
from tfmeta.data.class_listing import SPLITS, DataError

NAMES = BENCHMARKS
DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits")
_URL = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+/blob/[0-9a-f]{40}/\S+[^,\s]")
_REQUIRED = ("name", "title", "source", "counts", "splits")


class SplitListError(DataError):
    """A shipped class-split file is damaged or was edited (the message names the file)."""


@dataclasses.dataclass(frozen=True)
class BenchmarkSplit:
    """A benchmark's published class split.

    Attributes:
      name: the benchmark's name (one of :data:`NAMES`).
      title: how papers write it (``"mini-ImageNet"``).
      source: the paper and the URLs of the repository files the lists were taken from.
      counts: classes per split.
      splits: class names per split, in the published order.
      info: every other field of the file (``images_per_class``, ``categories``, ...).
    """

    name: str
    title: str
    source: str
    counts: Mapping[str, int]
    splits: Mapping[str, tuple[str, ...]]
    info: Mapping[str, Any]

    @property
    def urls(self) -> list[str]:
        """The repository file URLs in :attr:`source`."""
        return _URL.findall(self.source)

    @property
    def citation(self) -> str:
        """The paper part of :attr:`source`."""
        return self.source.split(" — ", 1)[0]

    def split_of(self) -> dict[str, str]:
        """``{class name: split}``."""
        return {name: split for split in SPLITS for name in self.splits[split]}

    def class_splits(self) -> dict[str, list[str]]:
        """``{split: [class names]}`` (new lists)."""
        return {split: list(self.splits[split]) for split in SPLITS}


def path(name: str) -> str:
    """The shipped file of benchmark ``name``."""
    if name not in NAMES:
        raise DataError(f"unknown benchmark {name!r}; known: {list(NAMES)}")
    return os.path.join(DIRECTORY, f"{name}.json")


@functools.lru_cache(maxsize=None)
def load(name: str) -> BenchmarkSplit:
    """Reads and checks the shipped class split of benchmark ``name``.

    Raises:
      DataError: an unknown name.
      SplitListError: the file is missing, is not JSON, or fails a check.
    """
    return load_file(path(name), name=name)


def load_file(file: str, *, name: str | None = None) -> BenchmarkSplit:
    """Reads and checks a class-split file (``name``: the benchmark it must be)."""
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise SplitListError(f"class split file {file} cannot be read ({e}); reinstall "
                             "tfmeta") from e
    return parse(data, where=file, name=name)


def parse(data: Any, *, where: str, name: str | None = None) -> BenchmarkSplit:
    """Checks a parsed class-split file and returns it as a :class:`BenchmarkSplit`.

    Checks: the required fields; the splits train/validation/test, each with as many distinct
    names as its count; no class in two splits; the source cites repository files at a commit;
    and the benchmark's own invariants (tiered-ImageNet's categories, FC100's superclasses,
    CUB's split rule).

    Raises:
      SplitListError: naming the file and what is wrong.
    """
    def fail(problem: str):
        raise SplitListError(f"class split file {where}: {problem}; the file is damaged or was "
                             "edited (reinstall tfmeta)")

    if not isinstance(data, dict):
        fail("it is not a JSON object")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        fail(f"fields {missing} are missing")
    if name is not None and data["name"] != name:
        fail(f"it is benchmark {data['name']!r}, not {name!r}")
    if not _URL.search(str(data["source"])) or " — " not in str(data["source"]):
        fail("its source must be '<paper> — <repository file URL at a commit>'")
    splits, counts = data["splits"], data["counts"]
    for what, value in (("splits", splits), ("counts", counts)):
        if not isinstance(value, dict) or sorted(value) != sorted(SPLITS):
            fail(f"'{what}' must have exactly the keys {list(SPLITS)}")
    seen: dict[str, str] = {}
    for split in SPLITS:
        names = splits[split]
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            fail(f"split {split!r} must be a list of class names")
        if len(names) != counts[split]:
            fail(f"split {split!r} has {len(names)} classes, its count says {counts[split]}")
        for n in names:
            if n in seen:
                where_else = "twice" if seen[n] == split else f"also in {seen[n]!r}"
                fail(f"class {n!r} of split {split!r} is listed {where_else}")
            seen[n] = split
    result = BenchmarkSplit(
        name=data["name"], title=data["title"], source=data["source"], counts=dict(counts),
        splits={split: tuple(splits[split]) for split in SPLITS},
        info={k: v for k, v in data.items() if k not in _REQUIRED})
    check = _CHECKS.get(result.name)
    if check is not None:
        problem = check(result)
        if problem:
            fail(problem)
    return result


def check_split_classes(benchmark: BenchmarkSplit, found: Mapping[str, Iterable[str]], *,
                        where: str) -> None:
    """Checks that each split of ``found`` holds exactly the benchmark's classes of that split.

    Args:
      benchmark: the published split.
      found: ``{split: class names}`` as a reader found them (e.g. one pickle or folder each).
      where: what was read, for the message (a path).

    Raises:
      DataError: one line naming every split that differs: found vs expected class counts, a
        few missing classes and a few unexpected ones (saying when they belong to another split).
    """
    split_of = benchmark.split_of()
    problems = []
    for split in SPLITS:
        names = list(found.get(split, ()))
        expected = benchmark.splits[split]
        names_set, expected_set = set(names), set(expected)
        missing = [n for n in expected if n not in names_set]
        extra = [n for n in names if n not in expected_set]
        if not missing and not extra:
            continue
        text = f"split '{split}' has {len(names)} classes, expected {len(expected)}"
        if missing:
            text += f"; missing {len(missing)}, e.g. {missing[:3]}"
        if extra:
            text += f"; {len(extra)} not of this split, e.g. " + ", ".join(
                repr(n) + (f" (a {split_of[n]} class)" if n in split_of else "")
                for n in extra[:3])
        problems.append(text)
    if problems:
        raise DataError(f"{where} does not hold the {benchmark.title} class split "
                        f"({benchmark.citation}): " + " | ".join(problems))


def check_pool(benchmark: BenchmarkSplit, found: Iterable[str], *, where: str) -> None:
    """Checks that every class of the benchmark is among ``found`` (one pool of classes).

    Raises:
      DataError: naming, per split, how many listed classes are missing and a few of them.
    """
    present = set(found)
    problems = []
    for split in SPLITS:
        missing = [n for n in benchmark.splits[split] if n not in present]
        if missing:
            problems.append(f"split '{split}': {len(missing)} of its "
                            f"{len(benchmark.splits[split])} classes are missing, e.g. "
                            f"{missing[:3]}")
    if problems:
        raise DataError(f"{where} lacks classes of the {benchmark.title} class split "
                        f"({benchmark.citation}): " + " | ".join(problems) +
                        f"; found classes are e.g. {sorted(present)[:3]}")


def _check_tiered(b: BenchmarkSplit) -> str | None:
    category_of = b.info.get("class_category", {})
    categories = b.info.get("categories", {})
    category_splits = b.info.get("category_splits", {})
    category_counts = b.info.get("category_counts", {})
    names = b.info.get("class_names", {})
    classes = set(b.split_of())
    if set(category_of) != classes or set(names) != classes:
        return "'class_category' and 'class_names' must name exactly the listed classes"
    owner: dict[str, str] = {}
    for split in SPLITS:
        used = sorted({category_of[c] for c in b.splits[split]})
        listed = category_splits.get(split, [])
        if sorted(listed) != used or len(listed) != category_counts.get(split):
            return (f"split {split!r} has classes of {len(used)} categories; 'category_splits' "
                    f"lists {len(listed)} and 'category_counts' says "
                    f"{category_counts.get(split)}")
        for category in used:
            if category in owner:
                return f"category {category!r} is in splits {owner[category]!r} and {split!r}"
            if category not in categories:
                return f"category {category!r} has no entry in 'categories'"
            owner[category] = split
    return None


def _check_fc100(b: BenchmarkSplit) -> str | None:
    superclasses = b.info.get("superclasses", {})
    superclass_splits = b.info.get("superclass_splits", {})
    counts = b.info.get("superclass_counts", {})
    if len(superclasses) != 20 or any(len(v) != 5 for v in superclasses.values()):
        return "'superclasses' must map CIFAR-100's 20 superclasses to their 5 classes each"
    for split in SPLITS:
        chosen = superclass_splits.get(split, [])
        if len(chosen) != counts.get(split) or not set(chosen) <= set(superclasses):
            return f"'superclass_splits' of split {split!r} disagrees with 'superclass_counts'"
        fine = sorted(f for s in chosen for f in superclasses[s])
        if fine != sorted(b.splits[split]):
            return f"split {split!r} is not the classes of its superclasses"
    return None


def _check_cub(b: BenchmarkSplit) -> str | None:
    ordered = sorted(b.split_of())
    if len(ordered) != 200 or [n[:4] for n in ordered] != [f"{i:03d}." for i in range(1, 201)]:
        return "the classes must be the 200 folders 001.* ... 200.*"
    rule = {"train": (2, 0), "validation": (4, 1), "test": (4, 3)}
    for split, (modulus, remainder) in rule.items():
        expected = [n for i, n in enumerate(ordered) if i % modulus == remainder]
        if sorted(b.splits[split]) != expected:
            return f"split {split!r} does not follow the split rule ({b.info.get('split_rule')})"
    return None


_CHECKS = {"tieredimagenet": _check_tiered, "fc100": _check_fc100, "cub": _check_cub}
