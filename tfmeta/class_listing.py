"""What an image source reader returns: classes with their images, per split, before preparation.

Every source of the image data layer (``folder:``, ``tfds:``, the named benchmarks, Omniglot) is a
reader that lists its classes. The listing is cheap (no pixels are decoded); :mod:`tfmeta.class_store`
then prepares it once into per-class record shards at the config's image size and channels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from tfmeta import errors

SPLITS = ("train", "validation", "test")


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
