"""Any TFDS image-classification dataset as a class listing (the ``tfds:NAME[/CONFIG]`` source).

:func:`read` prepares the dataset offline-first and groups its examples by class: the image
feature and the class label are found in the dataset's features (or named), every TFDS split is
read with the image left encoded (``tfds.decode.SkipDecoding``), so each item is the PNG or JPEG
bytes TFDS stored and nothing is decoded while listing. :func:`listing` then splits the classes by
published class lists or by fractions (:func:`tfmeta.data.class_listing.split_by_fractions`).

The encoded images of the whole dataset are held in memory (CIFAR-100: about 150 MB; CUB-200-2011:
about 1.1 GB). For datasets much larger than memory, export the images to class folders instead.

Offline preparation: TFDS looks for each file it would download in its manual directory,
``<data_dir>/downloads/manual/`` (data_dir: the argument, else ``$TFDS_DATA_DIR``, else
``~/tensorflow_datasets``), under the file name registered in the dataset's checksums (for
``cifar100``: ``cifar-100-binary.tar.gz``; for ``caltech_birds2011``: ``CUB_200_2011.tgz`` and
``segmentations.tgz``), verifies its checksum and uses it instead of downloading. When a download
fails, the :class:`~tfmeta.data.class_listing.DataError` raised here names those files and the
directory. A dataset prepared elsewhere can also be copied in whole (``<data_dir>/NAME/...``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import urllib.error
from collections.abc import Sequence

from tfmeta.data import class_listing
from tfmeta.data.class_listing import (DEFAULT_FRACTIONS, DEFAULT_SPLIT_SEED, ClassImages, DataError,
                                  Listing)

# Bumped when what read() returns for the same prepared dataset changes.
_READER_VERSION = 1
# NAME, then optionally /CONFIG and :VERSION, as tfds.builder accepts them.
_SPEC = re.compile(r"^[a-z0-9_]+(/[A-Za-z0-9_.+\-]+)?(:[0-9*]+\.[0-9*]+\.[0-9*]+)?$")
_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class TfdsClasses:
    """The classes of a TFDS dataset, before they are split.

    Attributes:
      full_name: ``NAME[/CONFIG]/VERSION`` of the prepared dataset.
      image_key, label_key: the features read (an ``Image`` and a ``ClassLabel``).
      classes: one per class with at least one example, in label order; items are encoded
        image bytes, item names ``"NAME/VERSION/SPLIT[INDEX]"``.
      split_sizes: examples per TFDS split (all of them were read).
      empty: class names of the ClassLabel without any example.
      fingerprint: identifies the prepared dataset (name, config, version, split sizes, features
        read, the label's class names); see :func:`fingerprint`.
    """

    full_name: str
    image_key: str
    label_key: str
    classes: list[ClassImages]
    split_sizes: dict[str, int]
    empty: list[str]
    fingerprint: str


def listing(spec: str, *, data_dir: str | None,
            class_splits: dict[str, list[str]] | None = None,
            fractions: Sequence[float] = DEFAULT_FRACTIONS, split_seed: int = DEFAULT_SPLIT_SEED,
            label_key: str | None = None, image_key: str | None = None) -> Listing:
    """Lists a TFDS image-classification dataset's classes, split into train/validation/test.

    Args:
      spec: ``"NAME[/CONFIG]"`` of a registered TFDS dataset (``":VERSION"`` may follow).
      data_dir: the TFDS data directory; None or "" for TFDS's default.
      class_splits: published class lists ``{"train": [...], "validation": [...],
        "test": [...]}`` (names as in the ClassLabel); every listed class must exist, classes
        in no list are left out and reported in ``Listing.skipped``. None: split by fractions.
      fractions, split_seed: the split when ``class_splits`` is None (see
        :func:`tfmeta.data.class_listing.split_by_fractions`).
      label_key, image_key: the features to use; found automatically when None (see
        :func:`read`).

    Raises:
      DataError: unknown dataset, ambiguous or missing features, a failed download (saying
        where to put the files), or a listed class missing.
    """
    return to_listing(read(spec, data_dir=data_dir, label_key=label_key, image_key=image_key),
                      class_splits=class_splits, fractions=fractions, split_seed=split_seed)


def to_listing(found: TfdsClasses, *, class_splits: dict[str, list[str]] | None = None,
               fractions: Sequence[float] = DEFAULT_FRACTIONS, split_seed: int = DEFAULT_SPLIT_SEED,
               origin: str | None = None) -> Listing:
    """Splits the classes :func:`read` found, by class lists or by fractions.

    ``origin`` replaces the default description of where the split comes from.
    """
    skipped = [(name, "class without examples in the dataset") for name in found.empty]
    if class_splits is not None:
        unknown = sorted(set(class_splits) - set(class_listing.SPLITS))
        if unknown:
            raise DataError(f"class splits of {found.full_name} have unknown split names "
                            f"{unknown}; allowed: {list(class_listing.SPLITS)}")
        present = {c.name for c in found.classes}
        missing = [n for names in class_splits.values() for n in names if n not in present]
        if missing:
            raise DataError(
                f"{len(missing)} listed classes are not classes with examples of TFDS dataset "
                f"{found.full_name} ('{found.label_key}'), e.g. {missing[:5]}; its classes are "
                f"e.g. {sorted(present)[:5]}")
        splits = class_listing.assign_classes(found.classes, class_splits, found.full_name)
        listed = {name for names in class_splits.values() for name in names}
        skipped += [(c.name, "class in none of the class lists") for c in found.classes
                    if c.name not in listed]
        how = "published class lists"
    else:
        names = class_listing.split_by_fractions([c.name for c in found.classes], fractions,
                                                 split_seed)
        by_name = {c.name: c for c in found.classes}
        splits = {split: [by_name[n] for n in ns] for split, ns in names.items()}
        how = (f"classes split by fractions {tuple(fractions)} with seed {split_seed}")
    return Listing(
        splits=splits,
        fingerprint=split_fingerprint(found.fingerprint, splits),
        origin=origin or f"TFDS {found.full_name} ('{found.label_key}' classes): {how}",
        skipped=skipped)


def split_fingerprint(source_fingerprint: str, splits: dict[str, Sequence[ClassImages]]) -> str:
    """A listing's fingerprint: its source's and which class is in which split."""
    payload = {"source": source_fingerprint,
               "splits": {s: [c.name for c in classes] for s, classes in sorted(splits.items())}}
    return _digest(payload)


def read(spec: str, *, data_dir: str | None, label_key: str | None = None,
         image_key: str | None = None) -> TfdsClasses:
    """Prepares a TFDS dataset (offline-first) and groups all its examples by class.

    The features: ``image_key`` must name a ``tfds.features.Image`` and ``label_key`` a
    ``tfds.features.ClassLabel`` among the dataset's top-level features. When one is None: the
    dataset's ``supervised_keys`` if they name such a feature (``cifar100``: ``image`` and
    ``label``, the fine classes), else the only feature of that kind; none, or several without
    supervised keys, is an error naming the candidates.

    Every TFDS split is read (a benchmark's class split replaces the dataset's own example split).
    Images stay encoded: items are the stored PNG/JPEG bytes.

    Raises:
      DataError: see :func:`listing`.
    """
    import numpy as np
    import tensorflow_datasets as tfds

    builder = prepare(spec, data_dir=data_dir)
    full_name = builder.info.full_name
    image_key, label_key = _features(builder, full_name, image_key=image_key,
                                     label_key=label_key)
    label = builder.info.features[label_key]
    split_sizes = _split_sizes(builder)
    decoders = tfds.decode.PartialDecoding({image_key: True, label_key: True},
                                           decoders={image_key: tfds.decode.SkipDecoding()})
    items: dict[int, list[bytes]] = {}
    names: dict[int, list[str]] = {}
    for split in split_sizes:
        dataset = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
        index = 0
        for batch in tfds.as_numpy(dataset.batch(_BATCH)):
            for image, value in zip(batch[image_key], np.asarray(batch[label_key]).tolist()):
                items.setdefault(value, []).append(bytes(image))
                names.setdefault(value, []).append(f"{full_name}/{split}[{index}]")
                index += 1
    classes = [ClassImages(name=label.int2str(v), items=items[v], item_names=names[v])
               for v in sorted(items)]
    empty = [label.int2str(v) for v in range(label.num_classes) if v not in items]
    return TfdsClasses(full_name=full_name, image_key=image_key, label_key=label_key,
                       classes=classes, split_sizes=split_sizes, empty=empty,
                       fingerprint=_fingerprint(builder, image_key, label_key))


def fingerprint(spec: str, *, data_dir: str | None, label_key: str | None = None,
                image_key: str | None = None) -> str:
    """Identifies a TFDS dataset as :func:`read` would read it, without reading any example.

    The digest of the dataset's name, config and version, its split sizes, the features read
    and the class names of the label; equal to ``read(...).fingerprint``. Prepares the dataset
    first when needed (:func:`prepare`), so it raises the same errors.
    """
    builder = prepare(spec, data_dir=data_dir)
    image_key, label_key = _features(builder, builder.info.full_name, image_key=image_key,
                                     label_key=label_key)
    return _fingerprint(builder, image_key, label_key)


def _fingerprint(builder, image_key: str, label_key: str) -> str:
    return _digest({"reader": _READER_VERSION, "tfds": builder.info.full_name,
                    "splits": _split_sizes(builder), "image": image_key, "label": label_key,
                    "classes": list(builder.info.features[label_key].names)})


def _split_sizes(builder) -> dict[str, int]:
    return {split: int(builder.info.splits[split].num_examples)
            for split in sorted(builder.info.splits.keys())}


def prepare(spec: str, *, data_dir: str | None):
    """Returns the TFDS builder of ``spec`` with its dataset prepared, without network if needed.

    An already prepared dataset is reused. Otherwise TFDS prepares it, taking the files it would
    download from :func:`manual_dir` when they are there.

    Raises:
      DataError: unknown dataset, config or version; a failed download (naming the files to put
        in the manual directory); a manual file with the wrong checksum.
    """
    import tensorflow_datasets as tfds

    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise DataError(f"TFDS dataset {spec!r} is not of the form NAME[/CONFIG] (NAME in lower "
                        "case, e.g. 'cifar100' or 'oxford_flowers102')")
    data_dir = data_dir or None
    try:
        builder = tfds.builder(spec, data_dir=data_dir)
    except (tfds.core.registered.DatasetNotFoundError, ValueError, AssertionError) as e:
        raise DataError(f"TFDS dataset {spec!r}: {_first_line(e)}") from e
    manual = manual_dir(builder)
    _fail_fast_offline(builder, manual)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual))
    except _download_errors() as e:
        raise DataError(_cannot_download(builder, manual, e)) from e
    except tfds.download.download_manager.NonMatchingChecksumError as e:
        raise DataError(f"TFDS dataset {builder.info.full_name}: a file in {manual} or the "
                        f"download cache is not the expected one ({_first_line(e)}); replace "
                        "it with a fresh copy") from e
    except AssertionError as e:
        if "Manual directory" not in str(e):
            raise
        raise DataError(f"TFDS dataset {builder.info.full_name} must be downloaded by hand: "
                        f"{' '.join(str(e).split())}") from e
    except ImportError as e:
        if "importlib_resources" not in str(e):
            raise
        raise DataError(f"TFDS dataset {builder.info.full_name} cannot be prepared: this "
                        "tensorflow-datasets needs the package importlib_resources to read a "
                        "builder's checksums (pip install importlib_resources)") from e
    return builder


def manual_dir(builder) -> str:
    """TFDS's manual directory of a builder: ``<data dir>/downloads/manual``."""
    return os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")


def registered_files(builder) -> dict[str, str]:
    """``{file name: URL}`` of the files a TFDS dataset downloads, from its registered checksums.

    These are the names TFDS looks for in the manual directory; empty when the dataset registers
    none (TFDS then cannot use a manual directory for it).
    """
    files: dict[str, str] = {}
    for url, info in _url_infos(builder).items():
        if info.filename:
            files.setdefault(info.filename, url)
    return files


def _url_infos(builder) -> dict:
    """``{URL: UrlInfo}`` registered for a TFDS dataset (empty when it registers none)."""
    import inspect

    import tensorflow_datasets as tfds

    try:
        infos = type(builder).url_infos
    except ImportError:  # TFDS 4.9 without importlib_resources: read the checksum files
        infos = None
        candidates = [tfds.core.utils.tfds_path() / "url_checksums" / f"{builder.name}.txt"]
        try:
            candidates.append(os.path.join(os.path.dirname(inspect.getfile(type(builder))),
                                           "checksums.tsv"))
        except (TypeError, OSError):
            pass
        for path in candidates:
            if os.path.isfile(os.fspath(path)):
                infos = tfds.core.download.checksums.load_url_infos(path)
                break
    return dict(infos or {})


def _fail_fast_offline(builder, manual: str) -> None:
    """Refuses at once when a file TFDS must download is absent and its server unreachable.

    Offline, TFDS retries each download for minutes before it fails. When the dataset is not
    prepared and a registered file is neither in the manual directory nor in TFDS's download
    cache, one request (through any configured proxy, 20 s at most) tells whether its server
    can be reached; if not, the error is the one a failed download gives, at once.

    Raises:
      DataError: naming the files to put in the manual directory and where.
    """
    import requests  # a dependency of tensorflow-datasets
    from tensorflow_datasets.core.download import resource

    if builder.is_prepared():
        return
    downloads = os.path.join(os.fspath(builder.data_dir_root), "downloads")
    absent = [url for url, info in _url_infos(builder).items()
              if not (info.filename and os.path.exists(os.path.join(manual, info.filename)))
              and not os.path.exists(os.path.join(downloads,
                                                  resource.get_dl_fname(url, info.checksum)))]
    if not absent:
        return
    try:
        requests.head(absent[0], timeout=20, allow_redirects=True)
    except requests.exceptions.RequestException as e:
        raise DataError(_cannot_download(builder, manual, e)) from e


def _download_errors() -> tuple[type[BaseException], ...]:
    import requests
    import tensorflow_datasets as tfds

    return (requests.exceptions.RequestException, urllib.error.URLError,
            tfds.download.DownloadError)


def _cannot_download(builder, manual: str, error: BaseException) -> str:
    files = registered_files(builder)
    head = f"TFDS dataset {builder.info.full_name} cannot be downloaded ({_first_line(error)})"
    if not files:
        return (f"{head}; it registers no file names, so TFDS cannot take its files from a "
                "manual directory: prepare it where the network is reachable and copy "
                f"{os.fspath(builder.data_dir)} to the same place under this data directory")
    missing = [f for f in sorted(files) if not os.path.isfile(os.path.join(manual, f))]
    wanted = ", ".join(f"{f} (from {files[f]})" for f in (missing or sorted(files)))
    return f"{head}; without network, put {wanted} in {manual} and run again"


def _features(builder, full_name: str, *, image_key: str | None,
              label_key: str | None) -> tuple[str, str]:
    import tensorflow_datasets as tfds

    features = builder.info.features
    kinds = {key: type(f).__name__ for key, f in features.items()}
    supervised = tuple(builder.info.supervised_keys or ())

    def pick(given, kind, what, arg):
        candidates = [k for k, f in features.items() if isinstance(f, kind)]
        allowed = f"a top-level tfds.features.{kind.__name__}"
        if given is not None:
            if given not in candidates:
                raise DataError(f"TFDS dataset {full_name}: {arg}={given!r} is not one of its "
                                f"{what} features {candidates} ({allowed}); its features: "
                                f"{kinds}")
            return given
        preferred = [k for k in supervised if k in candidates]
        if len(preferred) == 1:
            return preferred[0]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise DataError(f"TFDS dataset {full_name} has no {what} feature ({allowed}) "
                            f"among its features {kinds}; a tfds: source needs one")
        raise DataError(f"TFDS dataset {full_name} has several {what} features {candidates} "
                        f"and its supervised keys name none of them; choose one with {arg} "
                        f"(its features: {kinds})")

    return (pick(image_key, tfds.features.Image, "image", "image_key"),
            pick(label_key, tfds.features.ClassLabel, "class label", "label_key"))


def _first_line(error: BaseException, limit: int = 400) -> str:
    """The error's type and message on one line, shortened to about ``limit`` characters."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if len(text) > limit:
        text = text[:limit].rstrip() + " ..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]
