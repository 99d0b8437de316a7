"""What an image source reader returns: classes with their images, per split, before preparation.

Every source of the image data layer (``folder:``, ``tfds:``, the named benchmarks, Omniglot) is a
reader that lists its classes. The listing is cheap (no pixels are decoded); :mod:`tfmeta.data.class_store`
then prepares it once into per-class record shards at the config's image size and channels.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tfmeta.base import errors
from tfmeta.base.choices import SPLITS  # noqa: F401  (re-exported: the readers import it here)


class DataError(errors.UserError, ValueError):
    """The data of a source cannot be used as given (the message names the file or class)."""


@dataclasses.dataclass(frozen=True)
class ClassImages:
    """One class of a split, as listed by a reader.

    Attributes:
      name: the class name (unique across all splits of a source).
      items: the images: a file path (``str``), encoded image bytes, a ``uint8`` array ``[H, W]``
        or ``[H, W, C]``, or a zero-argument callable returning one of these (read lazily).
      item_names: one name per item for messages and the data summary (a path, or
        ``"file.pkl[123]"``).
    """

    name: str
    items: Sequence[Any]
    item_names: Sequence[str]

    def __post_init__(self):
        if len(self.items) != len(self.item_names):
            raise ValueError(f"class {self.name!r}: {len(self.items)} items but "
                             f"{len(self.item_names)} item names")


@dataclasses.dataclass
class Listing:
    """A source's classes per split.

    Attributes:
      splits: ``{"train": [...], "validation": [...], "test": [...]}`` (a split may be empty).
      fingerprint: changes whenever the listed content may have changed (file names, sizes and
        modification times, archive checksums, ...); part of the prepared data's cache key.
      origin: where the class split comes from, for the data summary and the README table
        (e.g. "Ravi & Larochelle 2017 split CSV files").
      skipped: ``(item name, reason)`` for every file left out while listing (non-image files,
        empty class folders, ...), reported in the log and the run's data summary.
    """

    splits: dict[str, list[ClassImages]]
    fingerprint: str
    origin: str
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"unknown split names {unknown}; allowed: {list(SPLITS)}")
        for split in SPLITS:
            self.splits.setdefault(split, [])
        check_unique_classes(self.splits)


def check_unique_classes(splits: dict[str, Sequence[ClassImages]]) -> None:
    """Raises DataError if a class name appears twice, in one split or across splits."""
    seen: dict[str, str] = {}
    for split in SPLITS:
        for cls in splits.get(split, ()):
            if cls.name in seen:
                where = (f"twice in split {split!r}" if seen[cls.name] == split
                         else f"in splits {seen[cls.name]!r} and {split!r}")
                raise DataError(f"class {cls.name!r} appears {where}; a class must belong to "
                                "exactly one split (meta-test classes must be unseen in training)")
            seen[cls.name] = split


Loader = Callable[[], Any]

# How classes are split when a source has no split of its own: the fractions of classes for
# meta-training / validation / test and the seed of the shuffle (config.data's defaults are
# these).
DEFAULT_FRACTIONS = (0.64, 0.16, 0.20)
DEFAULT_SPLIT_SEED = 1
# The file extensions (lower case) of the image files tfmeta reads, in training (class folders,
# benchmark folders) and in serving (tfmeta.adapt's support and query folders) alike: the one
# list, imported by every reader of user folders (decoded by tfmeta.data.image_decode). Any other file
# in such a folder is skipped and reported.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm")
# Reasons recorded for hidden entries (names starting with "."), which are never read.
HIDDEN_FILE = "hidden file (name starts with '.'): not read"
HIDDEN_FOLDER = "hidden folder (name starts with '.'): not read"


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden (starts with "."): never read, always recorded."""
    return name.startswith(".")


def _scandir(path: str) -> list[os.DirEntry]:
    """The entries of a folder inside the source, sorted by name.

    Raises:
      DataError: the folder cannot be read (permission denied, ...): its images would be lost.
    """
    try:
        with os.scandir(path) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot read folder {path!r} of the source: {e.strerror or e}; make it "
                        "readable (chmod) or move it out of the source folder") from e


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows a symbolic link
    except OSError:
        return False


def walk(path: str, real: str, ancestors: frozenset[str],
         skipped: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """``(path, real path)`` of every non-hidden file under ``path``, in sorted order.

    Symbolic links to folders are followed (as :mod:`tfmeta.data.image_folders` does for
    ``tfmeta.adapt``), except a link back to a folder the walk is inside, which would loop
    forever; it is recorded in ``skipped``, as is every hidden file and folder (never read).

    Args:
      path: the folder.
      real: its resolved path.
      ancestors: resolved paths of the folders above it, and of it.
      skipped: where left-out entries are recorded, ``(path, reason)``.
    """
    for entry in _scandir(path):
        if is_hidden(entry.name):
            skipped.append((entry.path, HIDDEN_FOLDER if _is_dir(entry) else HIDDEN_FILE))
            continue
        # Resolving only links keeps listing to one system call per entry.
        resolved = (os.path.realpath(entry.path) if entry.is_symlink()
                    else os.path.join(real, entry.name))
        if not _is_dir(entry):
            yield entry.path, resolved
        elif resolved in ancestors:
            skipped.append((entry.path, f"a link back to {resolved}, a folder it is inside "
                                        "(a cycle): not followed"))
        else:
            yield from walk(entry.path, resolved, ancestors | {resolved}, skipped)


def class_folder(path: str, name: str, skipped: list[tuple[str, str]],
                  seen: dict[str, tuple[str, str]]) -> ClassImages | None:
    """A class folder's images (recursively, sorted); None, recorded as skipped, if it has none.

    Every reader of class folders (``folder:``, the benchmarks' split folders and CUB's folders)
    lists them with this function, so they agree on what is read, skipped and refused.

    Args:
      path: the class folder.
      name: the class name.
      skipped: where left-out files are recorded.
      seen: ``{real path: (path, class)}`` of the files of the classes listed so far; a file
        reached twice in one class (through a link) is kept once, and recorded.

    Raises:
      DataError: a file of this class is also a file of another class (through a link).
    """
    real = os.path.realpath(path)
    files = []
    for full, resolved in walk(path, real, frozenset({real}), skipped):
        if os.path.splitext(full)[1].lower() not in IMAGE_EXTENSIONS:
            skipped.append((full, "not an image file (by its extension)"))
            continue
        if resolved in seen:
            first, owner = seen[resolved]
            if owner != name:
                raise DataError(
                    f"{full!r} (class {name!r}) and {first!r} (class {owner!r}) are the same file "
                    f"{resolved!r} (through a symbolic link): an image must belong to one class; "
                    "remove the link or the copy")
            skipped.append((full, f"the same file as {first} (a symbolic link): kept once"))
            continue
        seen[resolved] = (full, name)
        files.append(full)
    if not files:
        skipped.append((path, "empty class folder (no image files)"))
        return None
    return ClassImages(name, files, files)


def class_folders(path: str, skipped: list[tuple[str, str]],
                   seen: dict[str, tuple[str, str]], folders: dict[str, str]
                   ) -> list[ClassImages]:
    """The class folders of ``path`` (a source or split folder).

    Args:
      path: the folder holding the class folders.
      skipped: where left-out entries are recorded.
      seen: the files of the classes listed so far (see :func:`_class_folder`).
      folders: ``{real path: class folder}`` of the class folders listed so far.

    Raises:
      DataError: two class folders are the same folder (a symbolic link), which would put the
        same images in two classes (and possibly in two splits).
    """
    classes = []
    for entry in _scandir(path):
        full = entry.path
        if is_hidden(entry.name):
            skipped.append((full, HIDDEN_FOLDER if _is_dir(entry) else HIDDEN_FILE))
            continue
        if not _is_dir(entry):
            skipped.append((full, "a file outside any class folder"))
            continue
        real = os.path.realpath(full)
        if real in folders:
            raise DataError(f"class folders {folders[real]!r} and {full!r} are the same folder "
                            f"{real!r} (through a symbolic link): the same images would be two "
                            "classes, in two splits; remove one of them")
        folders[real] = full
        cls = class_folder(full, entry.name, skipped, seen)
        if cls is not None:
            classes.append(cls)
    return classes



# Accepted file names of each split in a class-list directory.
CLASS_LIST_FILES = {"train": ("train.txt",), "validation": ("validation.txt", "val.txt"),
                    "test": ("test.txt",)}


def split_by_fractions(names: Sequence[str], fractions: Sequence[float],
                       seed: int) -> dict[str, list[str]]:
    """Splits class names into train/validation/test by fractions, reproducibly.

    The names are sorted, shuffled with ``seed`` (numpy's PCG64) and cut at the rounded
    cumulative fractions, so the split depends only on the set of names, the fractions and the
    seed (never on listing order).

    Args:
      names: class names.
      fractions: (train, validation, test), non-negative, summing to 1.
      seed: seed of the shuffle.

    Returns:
      ``{split: sorted class names}``.
    """
    import numpy as np

    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got "
                         f"{tuple(fractions)}")
    ordered = sorted(names)
    order = np.random.default_rng(seed).permutation(len(ordered))
    cut1 = round(len(ordered) * fractions[0])
    cut2 = round(len(ordered) * (fractions[0] + fractions[1]))
    parts = {"train": order[:cut1], "validation": order[cut1:cut2], "test": order[cut2:]}
    return {split: sorted(ordered[i] for i in idx) for split, idx in parts.items()}


def read_class_lists(directory: str) -> dict[str, list[str]]:
    """Reads split files: ``train.txt``, ``validation.txt`` (or ``val.txt``), ``test.txt``.

    Each file lists class names, one per line; blank lines and lines starting with ``#`` are
    ignored. A missing file means an empty split, but at least ``train.txt`` must exist.

    Raises:
      DataError: no directory or no ``train.txt``, or a class listed twice.
    """
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise DataError(f"data.class_lists {directory!r} is a file, not a directory; give the "
                        "directory that holds train.txt, validation.txt (or val.txt) and "
                        "test.txt")
    if not os.path.isdir(directory):
        raise DataError(f"class-list directory {directory!r} does not exist; it must hold "
                        "train.txt, validation.txt (or val.txt) and test.txt")
    lists: dict[str, list[str]] = {}
    for split, candidates in CLASS_LIST_FILES.items():
        found = [f for f in candidates if os.path.lexists(os.path.join(directory, f))]
        if len(found) > 1:
            raise DataError(f"class-list directory {directory!r} has both {found}; keep one")
        if not found:
            if split == "train":
                raise DataError(f"class-list directory {directory!r} has no train.txt")
            lists[split] = []
            continue
        lines = _read_class_list(os.path.join(directory, found[0])).splitlines()
        lines = [line.strip() for line in lines]
        lists[split] = [line for line in lines if line and not line.startswith("#")]
    where: dict[str, str] = {}
    for split, names in lists.items():
        for name in names:
            if name in where:
                raise DataError(f"class {name!r} is listed in {where[name]!r} and {split!r} "
                                f"of {directory!r}; a class must belong to exactly one split")
            where[name] = split
    return lists


def _read_class_list(path: str) -> str:
    """The text of a class-list file (UTF-8, with or without a byte-order mark).

    Raises:
      DataError: not a regular file, unreadable, or not UTF-8 (naming the byte offset).
    """
    if not os.path.isfile(path):
        kind = "a directory" if os.path.isdir(path) else "not a regular file (or a broken link)"
        raise DataError(f"class list {path!r} is {kind}; it must be a text file, one class name "
                        "per line")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read class list {path!r}: {e.strerror or e}; make it "
                        "readable") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"class list {path!r} is not UTF-8 text (byte 0x{data[e.start]:02x} at "
                        f"offset {e.start} is not UTF-8); save it as UTF-8") from e


def assign_classes(classes: Sequence[ClassImages], lists: dict[str, Sequence[str]],
                   where: str) -> dict[str, list[ClassImages]]:
    """Places listed classes into the splits of ``lists``; every listed class must exist.

    Classes found but in no list are left out (the caller reports them as skipped).

    Raises:
      DataError: a listed class is missing from the source (naming up to five of them).
    """
    by_name = {c.name: c for c in classes}
    missing = [n for names in lists.values() for n in names if n not in by_name]
    if missing:
        raise DataError(f"{len(missing)} listed classes are not in {where}, e.g. "
                        f"{missing[:5]}; the class lists must name classes it has")
    return {split: [by_name[n] for n in names] for split, names in lists.items()}
