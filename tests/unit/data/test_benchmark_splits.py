"""The shipped class splits: counts, disjointness, sources, invariants, and damaged files."""

from __future__ import annotations

import configparser
import copy
import json
import os
import re

import pytest

from tfmeta.data import benchmark_splits
from tfmeta.data.benchmark_splits import SplitListError
from tfmeta.data.class_listing import DataError

from tests.helpers import REPO

# Restated from the papers: classes per split.
COUNTS = {"miniimagenet": (64, 16, 20), "tieredimagenet": (351, 97, 160), "cifarfs": (64, 16, 20),
          "fc100": (60, 20, 20), "cub": (100, 50, 50)}
REPOSITORIES = {"miniimagenet": {"twitter/meta-learning-lstm"},
                "tieredimagenet": {"renmengye/few-shot-ssl-public"},
                "cifarfs": {"tristandeleu/pytorch-meta"}, "fc100": {"ElementAI/TADAM"},
                "cub": {"wyharveychen/CloserLookFewShot"}}
CITATIONS = {"miniimagenet": "Ravi & Larochelle 2017", "tieredimagenet": "Ren et al. 2018",
             "cifarfs": "Bertinetto et al. 2019", "fc100": "Oreshkin et al. 2018",
             "cub": "Chen et al. 2019"}
WNID = re.compile(r"^n\d{8}$")


def raw(name: str) -> dict:
    with open(benchmark_splits.path(name), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("name", benchmark_splits.NAMES)
def test_counts_match_the_papers_and_splits_are_disjoint(name):
    split = benchmark_splits.load(name)
    sizes = tuple(len(split.splits[s]) for s in ("train", "validation", "test"))
    assert sizes == COUNTS[name]
    assert tuple(split.counts[s] for s in ("train", "validation", "test")) == COUNTS[name]
    every = [n for names in split.splits.values() for n in names]
    assert len(every) == len(set(every)) == sum(COUNTS[name])


@pytest.mark.parametrize("name", benchmark_splits.NAMES)
def test_sources_cite_the_paper_and_repository_files_at_a_commit(name):
    split = benchmark_splits.load(name)
    assert split.citation.startswith(CITATIONS[name])
    assert split.urls, split.source
    for url in split.urls:
        match = re.match(r"^https://github\.com/([^/]+/[^/]+)/blob/([0-9a-f]{40})/\S+$", url)
        assert match, url
        assert match.group(1) in REPOSITORIES[name]


def test_class_names_are_of_the_benchmarks_kind():
    for name in ("miniimagenet", "tieredimagenet"):
        assert all(WNID.match(n) for n in benchmark_splits.load(name).split_of()), name
    cifar_fs = set(benchmark_splits.load("cifarfs").split_of())
    fc100 = set(benchmark_splits.load("fc100").split_of())
    assert cifar_fs == fc100  # both are CIFAR-100's 100 fine classes
    assert {"aquarium_fish", "maple_tree", "sweet_pepper", "lawn_mower"} <= cifar_fs
    cub = benchmark_splits.load("cub").splits
    assert cub["train"][:2] == ("001.Black_footed_Albatross", "003.Sooty_Albatross")
    assert cub["validation"][0] == "002.Laysan_Albatross"
    assert cub["test"][0] == "004.Groove_billed_Ani"
    # Ravi & Larochelle's first test classes (nematode, king crab, golden retriever, ...).
    assert benchmark_splits.load("miniimagenet").splits["test"][:3] == (
        "n01930112", "n01981276", "n02099601")


def test_tiered_imagenet_categories():
    split = benchmark_splits.load("tieredimagenet")
    category_of = split.info["class_category"]
    owners = {}
    for s, n in zip(("train", "validation", "test"), (20, 6, 8)):
        categories = {category_of[c] for c in split.splits[s]}
        assert len(categories) == n == len(split.info["category_splits"][s])
        for category in categories:
            assert owners.setdefault(category, s) == s  # a category belongs to one split
    assert split.info["categories"]["n01524359"].startswith("passerine")
    assert split.info["class_names"]["n01530575"].startswith("brambling")
    assert sum(split.info["images"].values()) == 779165


def test_fc100_superclasses():
    split = benchmark_splits.load("fc100")
    assert sorted(split.info["superclass_splits"]["test"]) == [
        "aquatic_mammals", "insects", "medium_mammals", "people"]
    assert [len(split.info["superclass_splits"][s]) for s in ("train", "validation", "test")] \
        == [12, 4, 4]
    superclasses = split.info["superclasses"]
    assert superclasses["aquatic_mammals"] == ["beaver", "dolphin", "otter", "seal", "whale"]
    for s in ("train", "validation", "test"):
        assert sorted(split.splits[s]) == sorted(
            f for c in split.info["superclass_splits"][s] for f in superclasses[c])


def test_the_package_ships_the_files():
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    assert config["options.package_data"]["tfmeta.data"].split() == ["splits/*.json"]
    shipped = sorted(f[:-5] for f in os.listdir(benchmark_splits.DIRECTORY) if f.endswith(".json"))
    assert shipped == sorted(benchmark_splits.NAMES)


def _broken(name, edit):
    data = copy.deepcopy(raw(name))
    edit(data)
    return data


@pytest.mark.parametrize("name, edit, message", [
    ("miniimagenet", lambda d: d["splits"]["test"].pop(), r"split 'test' has 19 classes, its "
                                                          r"count says 20"),
    ("miniimagenet", lambda d: d["splits"]["test"].__setitem__(0, d["splits"]["train"][0]),
     r"class 'n01532829' of split 'test' is listed also in 'train'"),
    ("miniimagenet", lambda d: d.pop("counts"), r"fields \['counts'\] are missing"),
    ("miniimagenet", lambda d: d["splits"].__setitem__("val", d["splits"].pop("validation")),
     r"'splits' must have exactly the keys"),
    ("cifarfs", lambda d: d.__setitem__("source", "Bertinetto et al. 2019"), r"its source must"),
    ("tieredimagenet", lambda d: d["class_category"].__setitem__(d["splits"]["test"][0],
                                                                 "n01524359"),
     r"split 'test' has classes of 9 categories; 'category_splits' lists 8"),
    ("fc100", lambda d: d["superclass_splits"]["test"].__setitem__(0, "fish"),
     r"split 'test' is not the classes of its superclasses"),
    ("cub", lambda d: (d["splits"]["train"].__setitem__(0, d["splits"]["test"][0]),
                       d["splits"]["test"].__setitem__(0, "001.Black_footed_Albatross")),
     r"does not follow the split rule"),
])
def test_edited_lists_fail_with_a_clear_error(name, edit, message):
    with pytest.raises(SplitListError, match=message) as error:
        benchmark_splits.parse(_broken(name, edit), where="edited.json", name=name)
    assert str(error.value).startswith("class split file edited.json: ")
    assert benchmark_splits.parse(raw(name), where="x.json", name=name).name == name


def test_damaged_files_fail_with_a_clear_error(tmp_path):
    damaged = tmp_path / "cub.json"
    damaged.write_text(json.dumps(raw("cub"))[:-40])
    with pytest.raises(SplitListError, match=r"cub.json cannot be read .*reinstall tfmeta"):
        benchmark_splits.load_file(str(damaged))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(raw("cifarfs")))
    with pytest.raises(SplitListError, match=r"it is benchmark 'cifarfs', not 'fc100'"):
        benchmark_splits.load_file(str(other), name="fc100")
    with pytest.raises(DataError, match=r"unknown benchmark 'mini'; known: \['miniimagenet'"):
        benchmark_splits.load("mini")


def test_check_split_classes_names_the_split_counts_and_classes():
    split = benchmark_splits.load("miniimagenet")
    found = split.class_splits()
    benchmark_splits.check_split_classes(split, found, where="/data/mini")  # the same: no error
    moved = found["validation"].pop()
    found["test"].append(moved)
    found["test"].remove("n01930112")
    with pytest.raises(DataError) as error:
        benchmark_splits.check_split_classes(split, found, where="/data/mini")
    message = str(error.value)
    assert message.startswith("/data/mini does not hold the mini-ImageNet class split "
                              "(Ravi & Larochelle 2017")
    assert "split 'validation' has 15 classes, expected 16; missing 1, e.g. ['%s']" % moved \
        in message
    assert ("split 'test' has 20 classes, expected 20; missing 1, e.g. ['n01930112']; 1 not of "
            f"this split, e.g. '{moved}' (a validation class)") in message
    assert "split 'train'" not in message


def test_check_pool_names_missing_classes_per_split():
    split = benchmark_splits.load("cifarfs")
    every = list(split.split_of())
    benchmark_splits.check_pool(split, every + ["extra"], where="TFDS cifar100")
    with pytest.raises(DataError, match=r"TFDS cifar100 lacks classes of the CIFAR-FS class "
                                        r"split .*split 'test': 1 of its 20 classes are missing, "
                                        r"e.g. \['whale'\]"):
        benchmark_splits.check_pool(split, [n for n in every if n != "whale"],
                                    where="TFDS cifar100")
