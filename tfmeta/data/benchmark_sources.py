"""The named few-shot benchmarks as class listings, read from the files users actually have.

Each reader finds the benchmark's classes in one of the formats it is distributed in, checks them
against the published class split shipped with tfmeta (:mod:`tfmeta.data.benchmark_splits`) and
returns a :class:`~tfmeta.data.class_listing.Listing` in that split, each split's classes in the
published order. ``Listing.origin`` names the benchmark, the paper and the URLs the class lists
were taken from, and what was read.

============== ===================================================================================
miniimagenet   (a) the pickle caches ``mini-imagenet-cache-{train,val,test}.pkl`` (``val`` or
               ``validation``): ``{"image_data": uint8 [N, 84, 84, 3], "class_dict": {wnid:
               [indices]}}``; (b) Ravi & Larochelle's ``train.csv``, ``val.csv``, ``test.csv``
               (header ``filename,label``) beside an ``images/`` folder of the JPEGs; (c) split
               folders ``train/``, ``val/`` (or ``validation/``), ``test/`` of ``<wnid>/`` class
               folders. Looked for in this order; the first found is read.
tieredimagenet (a) Ren et al.'s pickles ``{train,val,test}_images_png.pkl`` (a list of PNG-encoded
               images) with ``{train,val,test}_labels.pkl`` (``label_specific``,
               ``label_specific_str``, ``label_general``, ``label_general_str``), also with the
               ``tiered-imagenet-`` prefix of some copies; (b) split folders as for
               mini-ImageNet, of ``<wnid>/`` class folders.
cifarfs, fc100 TFDS ``cifar100`` (its fine ``label`` classes) in the TFDS data directory.
cub            a ``CUB_200_2011`` folder (``images/<class folder>/*.jpg``), its ``images`` folder,
               or a folder holding ``CUB_200_2011``; without a path, TFDS ``caltech_birds2011``.
============== ===================================================================================

Nothing is decoded while listing: items are file paths, encoded bytes (TFDS, tiered-ImageNet's
PNGs, through lazy callables), or views into the mini-ImageNet cache's array. Loading a pickle is
unavoidable, though: the mini-ImageNet caches (about 1.3 GB in all) and tiered-ImageNet's PNG
pickles (about 12 GB; 16 GB decoded) are read into memory whole. Only open pickles you trust:
unpickling can run code.

Classes are checked strictly: a missing class, or a class in the wrong split, is a
:class:`~tfmeta.data.class_listing.DataError` naming the split, the found and expected counts and a few
of the classes. Image counts are not: when classes (or, for tiered-ImageNet and CUB, whose classes
vary in size, splits or the whole dataset) have another number of images than the benchmark's,
one warning is logged with how many differ and a few of them (``n01532829: 598 images;
mini-ImageNet has 600 per class``), and the images are used as they are; the run's data summary
lists every class's image count. ``Listing.skipped`` holds only what was left out (files that are
not images, images a CSV lists but that are absent, classes in no list).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import logging

from tfmeta.data import benchmark_splits, class_listing, tfds_source
from tfmeta.data.benchmark_splits import BenchmarkSplit
from tfmeta.data.class_listing import SPLITS, ClassImages, DataError, Listing
from tfmeta.data.class_listing import IMAGE_EXTENSIONS  # the one list, shared with serving

NAMES = benchmark_splits.NAMES
# Folder (or file) names of each split, in the order they are looked for.
SPLIT_NAMES = {"train": ("train",), "validation": ("val", "validation"), "test": ("test",)}
_WNID = re.compile(r"^n\d{8}$")
_CUB_FOLDER = re.compile(r"^\d{3}\.\S+$")
_READER_VERSION = 1


def listing(name: str, path: str | None, data_dir: str | None) -> Listing:
    """The listing of benchmark ``name``.

    Args:
      name: ``miniimagenet``, ``tieredimagenet`` (both need ``path``), ``cifarfs``, ``fc100``
        (TFDS ``cifar100`` in ``data_dir``; no path) or ``cub`` (``path``, else TFDS
        ``caltech_birds2011`` in ``data_dir``).
      path: where the benchmark's files are.
      data_dir: the TFDS data directory; None or "" for TFDS's default.

    Raises:
      DataError: an unknown name, a path given or missing, or anything the reader reports.
    """
    if name not in NAMES:
        raise DataError(f"unknown benchmark {name!r}; allowed: {list(NAMES)}")
    if name in ("miniimagenet", "tieredimagenet"):
        if not path:
            raise DataError(f"benchmark {name!r} needs the path of its files "
                            f"({name}:PATH); see tfmeta.data.benchmark_sources.{name}")
        return miniimagenet(path) if name == "miniimagenet" else tieredimagenet(path)
    if name in ("cifarfs", "fc100"):
        if path:
            raise DataError(f"benchmark {name!r} reads TFDS cifar100 from the TFDS data "
                            f"directory and takes no path (got {path!r})")
        return cifarfs(data_dir) if name == "cifarfs" else fc100(data_dir)
    return cub(path=path or None, data_dir=data_dir)


# ----------------------------------------------------------------------------- mini-ImageNet

_MINI_CACHE = {"train": ("mini-imagenet-cache-train.pkl",),
               "validation": ("mini-imagenet-cache-val.pkl", "mini-imagenet-cache-validation.pkl"),
               "test": ("mini-imagenet-cache-test.pkl",)}
_RAVI_CSV = {"train": ("train.csv",), "validation": ("val.csv", "validation.csv"),
             "test": ("test.csv",)}


def miniimagenet(path: str) -> Listing:
    """mini-ImageNet (Ravi & Larochelle 2017 split) from its pickle caches, CSVs or folders.

    See the module docstring for the formats. The pickle caches are loaded whole (unavoidable);
    their items are views into ``image_data`` (uint8 84x84x3), never copies.

    Raises:
      DataError: no known format in ``path`` (listing what was looked for), an unreadable or
        malformed file, or classes that differ from the published split.
    """
    benchmark = benchmark_splits.load("miniimagenet")
    _need_directory(path, benchmark)
    caches = _split_files(path, _MINI_CACHE)
    if caches:
        return _mini_pickles(benchmark, path, caches)
    tables = _split_files(path, _RAVI_CSV)
    if tables:
        return _mini_csv(benchmark, path, tables)
    folders = _split_files(path, SPLIT_NAMES, folders=True)
    if folders:
        return _from_split_folders(benchmark, path, folders)
    raise DataError(
        f"no mini-ImageNet found in {path}: looked for the pickle caches "
        "mini-imagenet-cache-{train,val,test}.pkl, Ravi & Larochelle's train.csv, val.csv and "
        "test.csv beside an images/ folder, and split folders train/, val/ (or validation/) "
        "and test/ of <wnid>/ class folders")


def _mini_pickles(benchmark: BenchmarkSplit, path: str, caches: dict[str, str]) -> Listing:
    import numpy as np

    found: dict[str, list[ClassImages]] = {}
    for split, file in caches.items():
        data = _load_pickle(file)
        if not isinstance(data, dict):
            raise DataError(f"{file} is not a mini-ImageNet cache: it holds a "
                            f"{type(data).__name__}, expected a dict with 'image_data' and "
                            "'class_dict'")
        data = {_text(k): v for k, v in data.items()}
        images, class_dict = data.get("image_data"), data.get("class_dict")
        if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4
                or not isinstance(class_dict, dict)):
            raise DataError(
                f"{file} is not a mini-ImageNet cache: expected 'image_data' (uint8 "
                "[N, 84, 84, 3]) and 'class_dict' ({wnid: [indices]}), found keys "
                f"{sorted(data)} ('image_data': {_describe(images)})")
        if images.shape[3] != 3:
            # A 4th channel may be alpha or anything else: guessing would change every pixel.
            raise DataError(
                f"{file}: 'image_data' is uint8 {list(images.shape)}, {images.shape[3]} channels; "
                "mini-ImageNet's caches hold RGB images [N, 84, 84, 3]: convert the cache to RGB "
                "(e.g. keep image_data[..., :3] if the 4th channel is alpha) or use the image "
                "files (their transparency is composited onto white)")
        name = os.path.basename(file)
        classes = []
        for wnid, indices in class_dict.items():
            indices = [int(i) for i in indices]
            bad = [i for i in indices if not 0 <= i < len(images)]
            if bad:
                raise DataError(f"{file}: class {_text(wnid)!r} lists image indices {bad[:3]} "
                                f"outside 'image_data' ({len(images)} images)")
            classes.append(ClassImages(name=_text(wnid), items=[images[i] for i in indices],
                                       item_names=[f"{name}[{i}]" for i in indices]))
        found[split] = classes
    return _finish(benchmark, found, where=path, read="the mini-ImageNet pickle caches",
                   files=_stats(caches.values()))


def _mini_csv(benchmark: BenchmarkSplit, path: str, tables: dict[str, str]) -> Listing:
    image_dir = os.path.join(path, "images")
    if not os.path.isdir(image_dir):
        raise DataError(f"{path} has Ravi & Larochelle's split CSVs but no images/ folder; put "
                        "the mini-ImageNet JPEGs they name in images/")
    present = {entry.name: entry for entry in os.scandir(image_dir) if entry.is_file()}
    found: dict[str, list[ClassImages]] = {}
    skipped: list[tuple[str, str]] = []
    files = _stats(tables.values())
    for split, table in tables.items():
        with open(table, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
            raise DataError(f"{table} is not one of Ravi & Larochelle's split CSVs: its header "
                            f"is {rows[0] if rows else 'missing'}, expected "
                            "['filename', 'label']")
        by_class: dict[str, list[str]] = {}
        absent = []
        for number, row in enumerate(rows[1:], 2):
            if not row:
                continue
            if len(row) != 2:
                raise DataError(f"{table}, line {number}: {row} is not 'filename,label'")
            filename, label = (c.strip() for c in row)
            if filename not in present:
                absent.append(filename)
                skipped.append((os.path.join(image_dir, filename),
                                f"listed in {os.path.basename(table)}, not in images/"))
                continue
            by_class.setdefault(label, []).append(filename)
            files.append((os.path.join("images", filename), present[filename].stat().st_size,
                          present[filename].stat().st_mtime_ns))
        if absent and not by_class:
            raise DataError(f"none of the {len(absent)} images {os.path.basename(table)} lists "
                            f"is in {image_dir} (e.g. {absent[0]!r}); put the mini-ImageNet "
                            "JPEGs there under the CSVs' file names")
        found[split] = [ClassImages(name=label, items=[os.path.join(image_dir, n) for n in names],
                                    item_names=[os.path.join(image_dir, n) for n in names])
                        for label, names in by_class.items()]
    return _finish(benchmark, found, where=path,
                   read="Ravi & Larochelle's split CSVs and images/", files=files,
                   skipped=skipped)


# --------------------------------------------------------------------------- tiered-ImageNet

_TIERED_PREFIXES = ("", "tiered-imagenet-")


def tieredimagenet(path: str) -> Listing:
    """tiered-ImageNet (Ren et al. 2018 split) from its PNG pickles or split folders.

    The pickles hold every image PNG-encoded; they are loaded whole (unavoidable: about 12 GB for
    the three splits) but never decoded here: each item is a zero-argument callable returning one
    image's PNG bytes. Class names in ``label_specific_str`` may be wnids or their WordNet names
    (as in Ren et al.'s ``words.txt``); both are mapped to wnids. Each class's ``label_general``
    must agree with the published categories (one value per category, one category per value).

    Raises:
      DataError: no known format in ``path`` (listing what was looked for), an unreadable or
        malformed file, unknown class names, classes or categories that differ from the
        published split.
    """
    benchmark = benchmark_splits.load("tieredimagenet")
    _need_directory(path, benchmark)
    pickles = _tiered_pickles(path)
    if pickles:
        return _tiered_from_pickles(benchmark, path, pickles)
    folders = _split_files(path, SPLIT_NAMES, folders=True)
    if folders:
        return _from_split_folders(benchmark, path, folders)
    raise DataError(
        f"no tiered-ImageNet found in {path}: looked for Ren et al.'s pickles "
        "{train,val,test}_images_png.pkl with {train,val,test}_labels.pkl (also with the prefix "
        "tiered-imagenet-), and split folders train/, val/ (or validation/) and test/ of "
        "<wnid>/ class folders")


def _tiered_pickles(path: str) -> dict[str, tuple[str, str]]:
    found = {}
    for split, short in (("train", "train"), ("validation", "val"), ("test", "test")):
        for prefix in _TIERED_PREFIXES:
            images = os.path.join(path, f"{prefix}{short}_images_png.pkl")
            labels = os.path.join(path, f"{prefix}{short}_labels.pkl")
            if os.path.isfile(images) or os.path.isfile(labels):
                found[split] = (images, labels)
                break
    if not found:
        return {}
    missing = [os.path.basename(f) for pair in found.values() for f in pair
               if not os.path.isfile(f)]
    missing += [f"{short}_images_png.pkl and {short}_labels.pkl"
                for split, short in (("train", "train"), ("validation", "val"), ("test", "test"))
                if split not in found]
    if missing:
        raise DataError(f"{path} has part of tiered-ImageNet's pickles; missing: {missing}")
    return found


def _tiered_from_pickles(benchmark: BenchmarkSplit, path: str,
                         pickles: dict[str, tuple[str, str]]) -> Listing:
    import numpy as np

    by_name = {name: wnid for wnid, name in benchmark.info["class_names"].items()}
    known = set(benchmark.split_of())
    found: dict[str, list[ClassImages]] = {}
    general: dict[str, dict[str, int]] = {}
    files = []
    for split, (images_file, labels_file) in pickles.items():
        images = _load_pickle(images_file)
        labels = _load_pickle(labels_file)
        files += _stats((images_file, labels_file))
        if isinstance(images, (str, bytes, dict)) or not hasattr(images, "__getitem__") \
                or not hasattr(images, "__len__"):
            raise DataError(f"{images_file} is not tiered-ImageNet's image pickle: it holds a "
                            f"{type(images).__name__}, expected a list of PNG-encoded images")
        labels = {_text(k): v for k, v in labels.items()} if isinstance(labels, dict) else {}
        needed = ("label_specific", "label_specific_str", "label_general")
        if any(k not in labels for k in needed):
            raise DataError(f"{labels_file} is not tiered-ImageNet's label pickle: expected the "
                            f"keys {list(needed)} (and label_general_str), found {sorted(labels)}")
        specific = np.asarray(labels["label_specific"]).astype(np.int64).ravel()
        coarse = np.asarray(labels["label_general"]).astype(np.int64).ravel()
        names = [_text(n) for n in labels["label_specific_str"]]
        if len(specific) != len(images) or len(coarse) != len(images):
            raise DataError(f"{labels_file} labels {len(specific)} images, {images_file} holds "
                            f"{len(images)}")
        if len(specific) and not 0 <= specific.min() <= specific.max() < len(names):
            raise DataError(f"{labels_file}: label_specific values outside 0..{len(names) - 1} "
                            "(the indices of label_specific_str)")
        unknown = [n for n in names if n not in known and n not in by_name]
        if unknown:
            raise DataError(
                f"{labels_file}: {len(unknown)} class names in label_specific_str are neither "
                f"tiered-ImageNet wnids nor their WordNet names, e.g. {unknown[:3]} (names as in "
                f"{benchmark.info['names_source']})")
        order = np.argsort(specific, kind="stable")
        bounds = np.searchsorted(specific[order], np.arange(len(names) + 1))
        base = os.path.basename(images_file)
        classes = []
        for k, name in enumerate(names):
            indices = order[bounds[k]:bounds[k + 1]].tolist()
            if not indices:
                continue
            wnid = name if name in known else by_name[name]
            values = set(coarse[indices].tolist())
            if len(values) != 1:
                raise DataError(f"{labels_file}: class {wnid!r} has images of several "
                                f"label_general values {sorted(values)}")
            general.setdefault(split, {})[wnid] = values.pop()
            classes.append(ClassImages(
                name=wnid, items=[functools.partial(_encoded, images, i) for i in indices],
                item_names=[f"{base}[{i}]" for i in indices]))
        found[split] = classes
    listing = _finish(benchmark, found, where=path, read="Ren et al.'s tiered-ImageNet pickles",
                      files=files)
    _check_tiered_categories(benchmark, general, where=path)
    return listing


def _check_tiered_categories(benchmark: BenchmarkSplit, general: Mapping[str, Mapping[str, int]],
                             where: str) -> None:
    """Each published category must be one label_general value of its split, and vice versa."""
    category_of = benchmark.info["class_category"]
    for split, values in general.items():
        value_of: dict[str, int] = {}
        category_with: dict[int, str] = {}
        for wnid, value in values.items():
            category = category_of[wnid]
            known_value = value_of.setdefault(category, value)
            known_category = category_with.setdefault(value, category)
            if known_value != value:
                problem = (f"class {wnid!r} has label_general {value}, other classes of its "
                           f"category {category!r} have {known_value}")
            elif known_category != category:
                problem = (f"categories {known_category!r} and {category!r} share label_general "
                           f"{value}")
            else:
                continue
            raise DataError(f"{where}: the label_general values of split '{split}' do not match "
                            f"the published tiered-ImageNet categories: {problem}")


def _encoded(images: Sequence[Any], index: int) -> bytes:
    """One image of a tiered-ImageNet pickle as PNG bytes (stored as a uint8 array)."""
    item = images[index]
    return item.tobytes() if hasattr(item, "tobytes") else bytes(item)


# ------------------------------------------------------------------------- CIFAR-FS, FC100

def cifarfs(data_dir: str | None) -> Listing:
    """CIFAR-FS (Bertinetto et al. 2019): 64/16/20 CIFAR-100 classes from TFDS ``cifar100``.

    Items are the PNG bytes TFDS stores. See :func:`tfmeta.data.tfds_source.prepare` for preparing
    ``cifar100`` offline (``cifar-100-binary.tar.gz`` in ``<data_dir>/downloads/manual``).
    """
    return _from_tfds(benchmark_splits.load("cifarfs"), "cifar100", data_dir)


def fc100(data_dir: str | None) -> Listing:
    """FC100 (Oreshkin et al. 2018): CIFAR-100 superclasses 12/4/4, i.e. 60/20/20 fine classes.

    Read from TFDS ``cifar100`` like :func:`cifarfs`; each class is a fine class.
    """
    return _from_tfds(benchmark_splits.load("fc100"), "cifar100", data_dir)


def _from_tfds(benchmark: BenchmarkSplit, spec: str, data_dir: str | None,
               rename: Callable[[tfds_source.TfdsClasses], list[ClassImages]] | None = None
               ) -> Listing:
    found = tfds_source.read(spec, data_dir=data_dir, label_key="label", image_key="image")
    if rename is not None:
        found = dataclasses.replace(found, classes=rename(found))
    where = f"TFDS {found.full_name} (data dir {data_dir or 'default'})"
    benchmark_splits.check_pool(benchmark, [c.name for c in found.classes], where=where)
    result = tfds_source.to_listing(found, class_splits=benchmark.class_splits(),
                                    origin=_origin(benchmark, f"TFDS {found.full_name}"))
    _warn_image_counts(benchmark, result.splits, where)
    return result


# ---------------------------------------------------------------------------------- CUB

def cub(path: str | None = None, data_dir: str | None = None) -> Listing:
    """CUB-200-2011 in Chen et al. 2019's 100/50/50 split of its 200 class folders.

    With ``path``: a ``CUB_200_2011`` folder, its ``images`` folder, or a folder holding
    ``CUB_200_2011``; items are the JPEG paths. Without: TFDS ``caltech_birds2011`` in
    ``data_dir``, whose labels 0..199 are the folders 001..200 in order (its ClassLabel has no
    names); items are the JPEG bytes TFDS stores.
    """
    benchmark = benchmark_splits.load("cub")
    if path is None:
        return _from_tfds(benchmark, "caltech_birds2011", data_dir,
                          rename=functools.partial(_cub_folder_names, benchmark))
    images = _cub_images_folder(path)
    skipped: list[tuple[str, str]] = []
    classes = class_listing.class_folders(images, skipped, {}, {})
    files = _file_stats({"all": classes}, images)
    benchmark_splits.check_pool(benchmark, [c.name for c in classes], where=images)
    by_name = {c.name: c for c in classes}
    listed = set(benchmark.split_of())
    skipped += [(c.name, "class folder in none of the class lists") for c in classes
                if c.name not in listed]
    found = {split: [by_name[n] for n in benchmark.splits[split]] for split in SPLITS}
    return _finish(benchmark, found, where=images, read="the CUB_200_2011 class folders",
                   files=files, skipped=skipped)


def _cub_images_folder(path: str) -> str:
    candidates = [os.path.join(path, "images"), path,
                  os.path.join(path, "CUB_200_2011", "images")]
    for candidate in candidates:
        if os.path.isdir(candidate) and any(
                _CUB_FOLDER.match(e.name) and e.is_dir() for e in os.scandir(candidate)):
            return candidate
    raise DataError(f"no CUB-200-2011 class folders found in {path}: looked in "
                    f"{candidates} for folders such as 001.Black_footed_Albatross")


def _cub_folder_names(benchmark: BenchmarkSplit,
                      found: tfds_source.TfdsClasses) -> list[ClassImages]:
    """TFDS caltech_birds2011's classes named by their folders (label i is folder i + 1)."""
    folders = sorted(benchmark.split_of())
    lookup = {}
    for i, folder in enumerate(folders):
        lookup[str(i)] = lookup[folder] = lookup[folder.split(".", 1)[1].lower()] = folder
    unknown = [c.name for c in found.classes if c.name not in lookup]
    if unknown:
        raise DataError(f"TFDS {found.full_name}: class names {unknown[:3]} are neither label "
                        "numbers 0..199 nor CUB-200-2011 folder names")
    return [dataclasses.replace(c, name=lookup[c.name]) for c in found.classes]


# ------------------------------------------------------------------------------- shared

def _need_directory(path: str, benchmark: BenchmarkSplit) -> None:
    if not isinstance(path, str) or not os.path.isdir(path):
        raise DataError(f"{benchmark.title} path {path!r} is not a directory")


def _split_files(path: str, names: Mapping[str, Sequence[str]], *,
                 folders: bool = False) -> dict[str, str]:
    """``{split: file or folder}`` found in ``path``; {} when none is there.

    Raises:
      DataError: some splits are there and others not, or a split is there under two names.
    """
    exists = os.path.isdir if folders else os.path.isfile
    found, missing = {}, []
    for split, candidates in names.items():
        present = [c for c in candidates if exists(os.path.join(path, c))]
        if len(present) > 1:
            raise DataError(f"{path} has both {present}; keep one")
        if present:
            found[split] = os.path.join(path, present[0])
        else:
            missing.append("/".join(candidates))
    if found and missing:
        kind = "split folders" if folders else "split files"
        present = sorted(os.path.basename(f) for f in found.values())
        raise DataError(f"{path} has the {kind} {present} but not {missing}")
    return found


def _from_split_folders(benchmark: BenchmarkSplit, path: str,
                        folders: dict[str, str]) -> Listing:
    found: dict[str, list[ClassImages]] = {}
    skipped: list[tuple[str, str]] = []
    seen: dict[str, tuple[str, str]] = {}
    real_folders: dict[str, str] = {}
    for split, folder in folders.items():
        found[split] = class_listing.class_folders(folder, skipped, seen, real_folders)
    return _finish(benchmark, found, where=path, read="split folders of class folders",
                   files=_file_stats(found, path), skipped=skipped)


def _file_stats(found: Mapping[str, Sequence[ClassImages]],
                root: str) -> list[tuple[str, int, int]]:
    """(path under ``root``, size, modification time) of every image file listed."""
    result = []
    for classes in found.values():
        for cls in classes:
            for item in cls.items:
                try:
                    stat = os.stat(item)
                except OSError:
                    continue  # a broken link: reported when it is decoded
                result.append((os.path.relpath(item, root), stat.st_size, stat.st_mtime_ns))
    return result


def _finish(benchmark: BenchmarkSplit, found: dict[str, list[ClassImages]], *, where: str,
            read: str, files: list, skipped: Sequence[tuple[str, str]] = ()) -> Listing:
    """Checks the classes found per split, orders them as published, reports image counts."""
    benchmark_splits.check_split_classes(
        benchmark, {split: [c.name for c in found.get(split, ())] for split in SPLITS},
        where=where)
    splits = {}
    for split in SPLITS:
        by_name = {c.name: c for c in found.get(split, ())}
        splits[split] = [by_name[n] for n in benchmark.splits[split]]
    payload = {"reader": _READER_VERSION, "benchmark": benchmark.name, "read": read,
               "files": sorted(files),
               "splits": {s: [c.name for c in classes] for s, classes in splits.items()}}
    fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]
    _warn_image_counts(benchmark, splits, where)
    return Listing(splits=splits, fingerprint=fingerprint,
                   origin=_origin(benchmark, f"{read} in {where}"), skipped=list(skipped))


def _origin(benchmark: BenchmarkSplit, read: str) -> str:
    return f"{benchmark.title} class split of {benchmark.source}; read from {read}"


def _warn_image_counts(benchmark: BenchmarkSplit, splits: Mapping[str, Sequence[ClassImages]],
                       where: str) -> list[tuple[str, str]]:
    """Logs one warning when image counts differ from the benchmark's; returns the differences.

    Counts are checked again on the prepared data, after unreadable images are skipped (see
    :func:`check_complete`), where a difference is refused unless explicitly allowed.
    """
    differences = image_counts(benchmark, splits)
    if differences:
        shown = "; ".join(f"{name}: {text}" for name, text in differences[:5])
        more = f"; and {len(differences) - 5} more" if len(differences) > 5 else ""
        logging.warning("%s in %s: %d image counts differ from the benchmark's (%s%s); this is "
                        "not the benchmark", benchmark.title, where, len(differences), shown,
                        more)
    return differences


def image_counts(benchmark: BenchmarkSplit,
                 splits: Mapping[str, Sequence[ClassImages]]) -> list[tuple[str, str]]:
    """``(name, what differs)`` for every image count of a listing that differs from the
    benchmark's (see :func:`count_differences`)."""
    return count_differences(benchmark, {split: {c.name: len(c.items) for c in splits[split]}
                                         for split in SPLITS})


def count_differences(benchmark: BenchmarkSplit,
                      counts: Mapping[str, Mapping[str, int]]) -> list[tuple[str, str]]:
    """``(name, what differs)`` for every image count that differs from the benchmark's.

    The name is a class's where the benchmark has a fixed number per class (mini-ImageNet,
    CIFAR-FS, FC100), a split's for tiered-ImageNet, the benchmark's (in total) for CUB.

    Args:
      benchmark: the published split.
      counts: ``{split: {class: images}}``.
    """
    report = []
    per_class = benchmark.info.get("images_per_class")
    if per_class:
        for split in SPLITS:
            for name, count in counts.get(split, {}).items():
                if count != per_class:
                    report.append((name, f"{count} images; {benchmark.title} has {per_class} "
                                         "per class"))
    per_split = benchmark.info.get("images")
    if isinstance(per_split, dict):
        for split in SPLITS:
            count = sum(counts.get(split, {}).values())
            if count != per_split[split]:
                report.append((split, f"{count} images; {benchmark.title} has "
                                      f"{per_split[split]} in this split"))
    elif isinstance(per_split, int):
        count = sum(n for classes in counts.values() for n in classes.values())
        if count != per_split:
            report.append((benchmark.name, f"{count} images; {benchmark.title} has {per_split}"))
    return report


def check_complete(name: str, counts: Mapping[str, Mapping[str, int]], *, where: str,
                   allow_partial: bool) -> str:
    """Checks that prepared data holds the whole benchmark ``name``, image by image.

    The rule: a named benchmark is only the benchmark when every published class has exactly
    the published number of images after preparation (unreadable images skipped). Missing
    classes are refused by the readers; this refuses short (or overfull) classes too, unless
    ``allow_partial``, when the data is used and every result is marked as not the benchmark.

    Args:
      name: the benchmark (one of :data:`NAMES`).
      counts: ``{split: {class: images kept}}`` of the prepared data.
      where: what was prepared, for the message.
      allow_partial: ``data.allow_partial_benchmark``.

    Returns:
      "" for the whole benchmark, else the note every result carries ("not CIFAR-FS: ...").

    Raises:
      DataError: counts differ and ``allow_partial`` is False (one line: the classes, found vs
        published, and the two repairs).
    """
    benchmark = benchmark_splits.load(name)
    differences = count_differences(benchmark, counts)
    if not differences:
        return ""
    shown = "; ".join(f"{n}: {text}" for n, text in differences[:5])
    more = f"; and {len(differences) - 5} more" if len(differences) > 5 else ""
    summary = f"{len(differences)} image counts differ from the published ones ({shown}{more})"
    if not allow_partial:
        raise DataError(f"{where} is not the whole {benchmark.title} benchmark: {summary}; "
                        f"repair the data (a complete copy), or set "
                        f"data.allow_partial_benchmark=True to use it anyway (every result is "
                        f"then marked as not {benchmark.title})")
    note = f"not {benchmark.title}: {summary}"
    logging.warning("%s; data.allow_partial_benchmark=True: results are marked as such.", note)
    return note


def _load_pickle(file: str):
    """Unpickles a file; Python 2 pickles (str as bytes) are read with latin-1, as numpy needs."""
    try:
        with open(file, "rb") as f:
            try:
                return pickle.load(f)
            except UnicodeDecodeError:
                f.seek(0)
                return pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, AttributeError,
            ImportError, IndexError, TypeError) as e:
        raise DataError(f"{file} cannot be read as a pickle ({type(e).__name__}: {e})") from e


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _describe(value) -> str:
    shape = getattr(value, "shape", None)
    return (f"{type(value).__name__} {getattr(value, 'dtype', '')} {list(shape)}"
            if shape is not None else type(value).__name__)


def _stats(paths) -> list[tuple[str, int, int]]:
    result = []
    for p in paths:
        stat = os.stat(p)
        result.append((os.path.basename(p), stat.st_size, stat.st_mtime_ns))
    return result
