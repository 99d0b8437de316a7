"""``data.source`` strings: which reader lists a source's classes, and where it is prepared.

=====================  =====================================================================
``folder:PATH``        class folders ``PATH/<class>/<image>``, or split folders
                       ``PATH/{train,val|validation,test}/<class>/...``
``tfds:NAME[/CONFIG]`` any TFDS image-classification dataset (:mod:`tfmeta.data.tfds_source`)
``miniimagenet:PATH``  the named benchmarks with their published class splits
``tieredimagenet:PATH`` (:mod:`tfmeta.data.benchmark_sources`); CIFAR-FS, FC100 and CUB read
``cifarfs``, ``fc100`` through TFDS, CUB also from its ``CUB_200_2011`` folder
``cub[:PATH]``
``omniglot``           Omniglot through its own TFDS builder (in memory, never prepared here)
=====================  =====================================================================

:func:`prepare` turns a config into prepared data (:mod:`tfmeta.data.class_store`): a cheap fingerprint
of the source (file names, sizes and modification times; a TFDS dataset's name, version and split
sizes) names the prepared directory, so a second run reuses it without listing or decoding
anything, and a changed source is prepared anew.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

from absl import logging

from tfmeta.data import class_listing, class_store
from tfmeta.data.class_listing import (DEFAULT_FRACTIONS, DEFAULT_SPLIT_SEED, DataError, Listing,
                                  assign_classes, class_folders, read_class_lists,
                                  split_by_fractions, walk)

KINDS = ("folder", "tfds", "miniimagenet", "tieredimagenet", "cifarfs", "fc100", "cub",
         "omniglot")
# Kinds that need a path, and those that take none (read through TFDS).
_NEEDS_PATH = ("folder", "tfds", "miniimagenet", "tieredimagenet")
_NO_PATH = ("cifarfs", "fc100", "omniglot")
IMAGE_EXTENSIONS = class_listing.IMAGE_EXTENSIONS
# Names of split folders, as most mini-ImageNet copies have them.
SPLIT_FOLDERS = {"train": ("train",), "validation": ("val", "validation"), "test": ("test",)}
PREPARED_SUBDIR = "tfmeta_prepared"
HIDDEN_FILE, HIDDEN_FOLDER = class_listing.HIDDEN_FILE, class_listing.HIDDEN_FOLDER


def parse(source: str) -> tuple[str, str]:
    """Splits ``data.source`` into (kind, argument).

    Raises:
      DataError: unknown kind, or a path missing or given where none is taken.
    """
    kind, _, arg = source.strip().partition(":")
    if kind not in KINDS:
        raise DataError(f"data.source {source!r} is not a known source; allowed: folder:PATH, "
                        "tfds:NAME[/CONFIG], miniimagenet:PATH, tieredimagenet:PATH, cifarfs, "
                        "fc100, cub[:PATH], omniglot")
    if kind in _NEEDS_PATH and not arg:
        raise DataError(f"data.source {source!r} needs a {'name' if kind == 'tfds' else 'path'} "
                        f"after '{kind}:'")
    if kind in _NO_PATH and arg:
        raise DataError(f"data.source {source!r}: '{kind}' takes no path (it is read through "
                        "TFDS; use data.data_dir for TFDS's data directory)")
    return kind, arg


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        raise DataError(f"cannot list {path!r}: {e.strerror or e}") from e


def _split_folders(path: str) -> dict[str, str] | None:
    """``{split: folder}`` if ``path`` is laid out in split folders (train/ at least), else None."""
    names = {n for n in _listdir(path) if os.path.isdir(os.path.join(path, n))}
    found: dict[str, str] = {}
    for split, candidates in SPLIT_FOLDERS.items():
        present = [c for c in candidates if c in names]
        if len(present) > 1:
            raise DataError(f"{path!r} has split folders {present}; keep one of them")
        if present:
            found[split] = os.path.join(path, present[0])
    if "train" in found and len(found) >= 2:
        return found
    return None


def folder_listing(path: str, *, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                   split_seed: int = DEFAULT_SPLIT_SEED, class_lists: str = "") -> Listing:
    """Lists a directory of class folders (see the module docstring).

    Without split folders the classes are split by the class-list files in ``class_lists`` or by
    ``fractions`` (seeded by ``split_seed``). Hidden files and folders (never read), non-image
    files, files outside class folders, class folders without images, link cycles and files
    reached twice in a class through links are skipped and recorded (:attr:`Listing.skipped`).
    Links to folders are followed.

    Raises:
      DataError: no such directory, an unreadable folder, no class folders, a class in two
        splits, a listed class missing, two class folders (or two classes' files) that are the
        same through a symbolic link.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise DataError(f"data.source folder {path!r} does not exist or is not a directory")
    skipped: list[tuple[str, str]] = []
    seen: dict[str, tuple[str, str]] = {}
    folders: dict[str, str] = {}
    layout = _split_folders(path)
    if layout is not None:
        if class_lists:
            raise DataError(f"{path!r} has split folders; data.class_lists would split it a second "
                            "way: leave data.class_lists empty")
        if tuple(fractions) != DEFAULT_FRACTIONS or split_seed != DEFAULT_SPLIT_SEED:
            raise DataError(f"{path!r} has split folders, which decide the split: "
                            f"data.split_fractions {tuple(fractions)!r} and data.split_seed "
                            f"{split_seed} would be ignored; leave them at their defaults "
                            f"{DEFAULT_FRACTIONS!r} and {DEFAULT_SPLIT_SEED}")
        splits = {split: class_folders(folder, skipped, seen, folders)
                  for split, folder in layout.items()}
        origin = f"split folders of {path}"
    else:
        classes = class_folders(path, skipped, seen, folders)
        if class_lists:
            lists = read_class_lists(class_lists)
            splits = assign_classes(classes, lists, f"folder {path!r}")
            listed = {n for names in lists.values() for n in names}
            skipped += [(os.path.join(path, c.name), "class folder in no class list")
                        for c in classes if c.name not in listed]
            origin = f"class lists in {class_lists}"
        else:
            names = split_by_fractions([c.name for c in classes], fractions, split_seed)
            by_name = {c.name: c for c in classes}
            splits = {split: [by_name[n] for n in names[split]] for split in names}
            origin = (f"classes split {'/'.join(f'{f:g}' for f in fractions)} with seed "
                      f"{split_seed}")
    if not any(splits.values()):
        raise DataError(f"data.source folder {path!r} has no class folders with images; expected "
                        f"{path}/<class>/<image> or {path}/train/<class>/<image>")
    _log_skipped(path, skipped)
    return Listing(splits, fingerprint="", origin=origin, skipped=skipped)


def _log_skipped(path: str, skipped: Sequence[tuple[str, str]]) -> None:
    """One log line: how many entries of the source were left out, hidden ones apart."""
    hidden = sum(reason in (HIDDEN_FILE, HIDDEN_FOLDER) for _, reason in skipped)
    if skipped:
        logging.info("Listing %s: %d hidden files and folders not read, %d other entries skipped "
                     "(non-image files, empty class folders, ...); each is listed with its reason "
                     "in the run's data_summary.json (files_skipped_while_listing).", path,
                     hidden, len(skipped) - hidden)


def _stat_fingerprint(path: str) -> list[Any]:
    """Names, sizes and modification times of every file under ``path`` (or of the file).

    Walked as the listing walks (links followed, hidden entries left out: they are never read).
    """
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(path):
        st = os.stat(path)
        return [[path, st.st_size, st.st_mtime_ns]]
    entries = []
    if os.path.isdir(path):
        real = os.path.realpath(path)
        for full, _ in walk(path, real, frozenset({real}), []):
            try:
                st = os.stat(full)
            except OSError:
                continue  # a broken link: the listing reports it
            entries.append([os.path.relpath(full, path), st.st_size, st.st_mtime_ns])
    return [path, entries]


def fingerprint(kind: str, arg: str, *, data_dir: str | None, fractions: Sequence[float],
                split_seed: int, class_lists: str) -> str:
    """A cheap digest of everything a source's listing depends on (no image is read)."""
    parts: list[Any] = [kind, arg]
    if kind == "folder":
        parts += [_stat_fingerprint(arg), list(fractions), split_seed]
        if class_lists:
            parts.append(_stat_fingerprint(class_lists))
    elif kind in ("tfds", "cifarfs", "fc100") or (kind == "cub" and not arg):
        from tfmeta.data import tfds_source

        parts += [tfds_source.fingerprint(_tfds_name(kind, arg), data_dir=data_dir),
                  list(fractions), split_seed]
    else:
        parts.append(_stat_fingerprint(arg))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _tfds_name(kind: str, arg: str) -> str:
    return {"tfds": arg, "cifarfs": "cifar100", "fc100": "cifar100",
            "cub": "caltech_birds2011"}[kind]


def listing(source: str, *, data_dir: str | None = None,
            fractions: Sequence[float] = DEFAULT_FRACTIONS, split_seed: int = DEFAULT_SPLIT_SEED,
            class_lists: str = "") -> Listing:
    """The listing of any source string except ``omniglot`` (read by :mod:`tfmeta.data.omniglot`)."""
    kind, arg = parse(source)
    if kind == "folder":
        return folder_listing(arg, fractions=fractions, split_seed=split_seed,
                              class_lists=class_lists)
    if kind == "tfds":
        from tfmeta.data import tfds_source

        lists = read_class_lists(class_lists) if class_lists else None
        return tfds_source.listing(arg, data_dir=data_dir, class_splits=lists,
                                   fractions=fractions, split_seed=split_seed)
    if kind == "omniglot":
        raise DataError("data.source 'omniglot' is read by tfmeta.data.omniglot, not listed")
    from tfmeta.data import benchmark_sources

    return benchmark_sources.listing(kind, arg or None, data_dir)


def prepared_root(prepared_dir: str, data_dir: str) -> str:
    """Where prepared sources live: ``prepared_dir``, else ``<TFDS data dir>/tfmeta_prepared``."""
    if prepared_dir:
        return os.path.abspath(os.path.expanduser(prepared_dir))
    base = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
    return os.path.join(os.path.abspath(os.path.expanduser(base)), PREPARED_SUBDIR)


def prepare(source: str, *, image_size: int, channels: int, resize: str = "stretch",
            min_side: int = 0, data_dir: str = "", prepared_dir: str = "",
            fractions: Sequence[float] = DEFAULT_FRACTIONS, split_seed: int = DEFAULT_SPLIT_SEED,
            class_lists: str = "") -> class_store.Prepared:
    """Prepared data of a source at a size, prepared on first use (see the module docstring).

    When the source's files are gone (a folder or benchmark path that no longer exists), the
    newest data prepared from that path with the same settings is used, with a warning: its
    shards are checked on load, so an evaluation or a resume needs no source.

    Raises:
      DataError: the source cannot be read (the message names the file or class), or
        ``data.prepared_dir`` is a file.
      class_store.PreparedWriteError: the prepared directory cannot be written.
    """
    kind, arg = parse(source)
    root = prepared_root(prepared_dir, data_dir)
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"data.prepared_dir {root!r} is a file, not a directory; set "
                        "data.prepared_dir to a directory (or leave it empty for the default)")
    settings = _settings(kind, arg, resize=resize, min_side=min_side, fractions=fractions,
                         split_seed=split_seed, class_lists=class_lists)
    if kind in _NEEDS_PATH + ("cub",) and arg and not os.path.exists(settings["path"]):
        found = _prepared_without_source(root, kind, image_size, channels, settings)
        if found is not None:
            logging.warning("The source %s is gone; using the data prepared from it in %s.",
                            source, found)
            return class_store.load(found)
    digest = fingerprint(kind, arg, data_dir=data_dir or None, fractions=fractions,
                         split_seed=split_seed, class_lists=class_lists)
    key = class_store.cache_key(digest, image_size=image_size, channels=channels, resize=resize,
                                min_side=min_side)
    directory = os.path.join(root, f"{kind}-{image_size}x{image_size}x{channels}-{key}")
    if os.path.exists(os.path.join(directory, class_store.SPEC_FILE)):
        return class_store.load(directory)
    with class_store.writing(root):  # before listing: fail at once, not after
        os.makedirs(root, exist_ok=True)
    logging.info("Preparing %s at %dx%dx%d in %s; later runs reuse it.", source, image_size,
                 image_size, channels, directory)
    found = listing(source, data_dir=data_dir or None, fractions=fractions,
                    split_seed=split_seed, class_lists=class_lists)
    found.fingerprint = digest
    return class_store.prepare(found, directory, image_size=image_size, channels=channels,
                               resize=resize, min_side=min_side, source=source,
                               settings=settings)


def _settings(kind: str, arg: str, **settings: Any) -> dict[str, Any]:
    """What a prepared directory was made from besides its size: recorded in its spec."""
    path = os.path.abspath(os.path.expanduser(arg)) if arg and kind != "tfds" else arg
    return json.loads(json.dumps({"kind": kind, "path": path, **settings}))  # JSON's types


def _prepared_without_source(root: str, kind: str, image_size: int, channels: int,
                             settings: dict[str, Any]) -> str | None:
    """The newest complete prepared directory of ``root`` made with ``settings``, or None."""
    prefix = f"{kind}-{image_size}x{image_size}x{channels}-"
    candidates = []
    for name in (os.listdir(root) if os.path.isdir(root) else ()):
        spec_path = os.path.join(root, name, class_store.SPEC_FILE)
        if not name.startswith(prefix) or not os.path.isfile(spec_path):
            continue
        try:
            spec = class_store.read_spec(os.path.join(root, name))
        except DataError:
            continue  # damaged: not this one
        if isinstance(spec, dict) and spec.get("settings") == settings:
            candidates.append((os.path.getmtime(spec_path), os.path.join(root, name)))
    return max(candidates)[1] if candidates else None
