"""One home for each fact: the closed name sets in tfmeta.base.choices, registries keyed by them,
and literals (split fractions, image extensions, Omniglot's drawings) stated once in the package."""

import os
import re

import pytest

from tfmeta.base import choices

from tests.helpers import REPO

PACKAGE = os.path.join(REPO, "tfmeta")


def _sources():
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    yield os.path.relpath(path, PACKAGE), f.read()


def _code(text: str) -> str:
    """The text without comments and docstrings' prose lines (``#`` to the end of a line)."""
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_registries_have_the_choice_sets_as_keys():
    from tfmeta.core import losses
    from tfmeta.run import config, experiment

    assert set(experiment.ALGORITHMS) == set(choices.ALGORITHMS)
    assert set(experiment.MODELS) == set(choices.MODELS)
    assert set(losses._LOSSES) == set(choices.LOSSES)
    assert set(losses._ACCURACIES) <= set(choices.LOSSES)
    assert set(choices.MAML_FAMILY) <= set(choices.ALGORITHMS)
    # The config offers exactly the choices (re-exported from their home, not copies).
    for name in ("ALGORITHMS", "BN_MODES", "TASKS", "MODELS", "STORAGE", "RESIZE", "CHANNELS",
                 "OUTER_OPTIMIZERS", "SCHEDULES", "DOWNSAMPLING", "HEADS", "DTYPES", "SUBSETS",
                 "SPLITS", "REMAT", "INNER_OPTIMIZERS", "SPLIT_SCHEMES", "BENCHMARKS"):
        assert getattr(config, name) is getattr(choices, name), name


def test_data_modules_use_the_choice_sets():
    from tfmeta.data import benchmark_splits, class_listing, image_decode, omniglot

    assert benchmark_splits.NAMES is choices.BENCHMARKS
    assert class_listing.SPLITS is choices.SPLITS and omniglot.SPLITS is choices.SPLITS
    assert omniglot.SUBSETS is choices.SUBSETS
    assert image_decode.RESIZE is choices.RESIZE and image_decode.CHANNELS is choices.CHANNELS


def test_strategy_names_are_the_ones_the_binaries_build():
    import inspect

    from tfmeta.base import distribute

    source = inspect.getsource(distribute.make_strategy)
    built = set(re.findall(r'name == "(\w+)"', source))
    assert built == set(choices.STRATEGIES)


def test_every_closed_set_is_stated_once():
    """No module outside choices.py defines a tuple literal equal to one of the choice sets."""
    sets = {name: value for name, value in vars(choices).items()
            if name.isupper() and isinstance(value, tuple) and len(value) > 1}
    found = []
    for path, text in _sources():
        if path == os.path.join("base", "choices.py"):
            continue
        for match in re.finditer(r"^\s*[A-Z_]+\s*(?::[^=]+)?=\s*(\([^()]*\))", _code(text), re.M):
            try:
                value = eval(match.group(1), {})  # a literal tuple of names or numbers
            except Exception:
                continue
            for name, choice in sets.items():
                if value == choice:
                    found.append(f"{path}: {match.group(0).strip()} (choices.{name})")
    assert not found, found


@pytest.mark.parametrize("literal, home", [
    ("0.64", os.path.join("data", "class_listing.py")),  # the split fractions
    ('".jpeg"', os.path.join("data", "class_listing.py")),  # the image extensions
    ("DRAWINGS_PER_CHARACTER = ", os.path.join("data", "omniglot_builder.py")),
])
def test_facts_are_stated_in_their_home_only(literal, home):
    holders = sorted(path for path, text in _sources() if literal in _code(text))
    assert holders == [home]


def test_omniglot_drawings_limit_is_applied_by_the_omniglot_source_only():
    """No generic module assumes Omniglot's 20 drawings per class."""
    for path, text in _sources():
        if path in (os.path.join("data", "omniglot_builder.py"),
                    os.path.join("data", "omniglot.py")):
            continue
        code = _code(text)
        assert not re.search(r"[^\w.]20, None\b|drawings.*\b20\b", code), path
