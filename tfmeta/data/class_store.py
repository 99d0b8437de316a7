"""Prepared image data: per-class record shards and a JSON spec, read into memory or streamed.

A source's listing (:mod:`tfmeta.data.class_listing`) is prepared once, at the config's image size and
channels, into a directory::

    spec.json                  classes per split, their image counts, every shard's checksum,
                               per-channel pixel sums, what was skipped and why
    train/c00000_0000.rec      class 0 of train, its first shard: fixed-length records, each one
    train/c00000_0001.rec      image as uint8 H x W x C (row-major), ``records_per_shard`` per file
    ...

(the layout of Meta-Dataset's per-class record files, with raw fixed-length records so that an
episode reads one image without decoding anything: ``tf.io.read_file`` of a ~256 KB shard and a
substring). Fixed-length records are also what ``tf.data.FixedLengthRecordDataset`` reads.

Preparation is resumable: each finished class is appended to ``progress.jsonl`` (after its shards
are renamed into place), and a restarted preparation verifies the checksums of the classes already
done and continues with the next one. ``spec.json`` is written last, atomically; its presence means
the directory is complete. Loading checks the spec, every shard's size, and (locally) the SHA-256
of every shard changed since the last check, recorded in ``verified.json`` (see :func:`load`);
:func:`verify` recomputes every checksum. A failed write (full disk, read-only directory) is one
:class:`PreparedWriteError`; nothing half-written is ever trusted.

Files go through ``tf.io.gfile``, so the prepared directory may be on any file system TensorFlow
reads (``gs://`` for a TPU pod, whose workers then read only the shards they sample).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from tfmeta.data.class_listing import SPLITS, ClassImages, DataError, Listing

FORMAT_VERSION = 1
SPEC_FILE = "spec.json"
PROGRESS_FILE = "progress.jsonl"
# Which shards' SHA-256 were checked, when (size, modification time, inode) and against which
# spec: loading hashes again only the shards changed since (see :func:`load`).
VERIFIED_FILE = "verified.json"
TMP_SUFFIX = ".tmp"
# How the reason of an image skipped for its size starts (in the spec and the data summary).
TOO_SMALL = "too small:"
# Shard size: large enough that a class has few files, small enough that reading one image (a
# whole shard, then a substring) costs little.
TARGET_SHARD_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True)
class ClassRecord:
    """One prepared class.

    Attributes:
      name: class name.
      count: images kept.
      shards: ``{"file": path relative to the directory, "count": n, "sha256": hex}`` each.
      skipped: ``[item name, reason]`` of each image left out.
      images: the item name of each image kept, in record order (empty in data prepared before
        the names were recorded).
    """

    name: str
    count: int
    shards: tuple[dict, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    images: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "count": self.count, "shards": list(self.shards),
                "skipped": [list(s) for s in self.skipped], "images": list(self.images)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClassRecord":
        return cls(str(d["name"]), int(d["count"]), tuple(d["shards"]),
                   tuple((str(a), str(b)) for a, b in d.get("skipped", ())),
                   tuple(str(n) for n in d.get("images", ())))


@dataclasses.dataclass
class Prepared:
    """A prepared source: its spec and where its shards are.

    Attributes:
      directory: the prepared directory.
      image_shape: ``(H, W, C)`` of every image.
      records_per_shard: images per shard (a class's last shard may hold fewer).
      classes: ``{split: [ClassRecord, ...]}`` in the listing's order.
      source: the source string it was prepared from.
      origin: where the class split comes from.
      fingerprint: the listing's fingerprint.
      skipped: ``[item name, reason]`` left out while listing (non-image files, ...).
      stats: ``{split: {"sum": [C], "sum_sq": [C], "pixels": n}}`` of pixels / 255.
    """

    directory: str
    image_shape: tuple[int, int, int]
    records_per_shard: int
    classes: dict[str, list[ClassRecord]]
    source: str
    origin: str
    fingerprint: str
    skipped: list[tuple[str, str]]
    stats: dict[str, dict[str, Any]]

    @property
    def record_bytes(self) -> int:
        return int(np.prod(self.image_shape))

    def split_bytes(self, split: str) -> int:
        """Bytes of a split's pixels in memory."""
        return sum(c.count for c in self.classes[split]) * self.record_bytes

    def mean_std(self, split: str = "train") -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and standard deviation of a split's pixels / 255."""
        stats = self.stats[split]
        if not stats["pixels"]:
            raise DataError(f"split {split!r} of {self.source!r} has no image to measure the "
                            f"normalisation on: {self.why_empty(split)}")
        mean = np.asarray(stats["sum"]) / stats["pixels"]
        var = np.maximum(np.asarray(stats["sum_sq"]) / stats["pixels"] - mean**2, 0.0)
        # A constant channel would divide by zero; 1/255 keeps it finite and harmless.
        std = np.maximum(np.sqrt(var), 1.0 / 255.0)
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def why_empty(self, split: str) -> str:
        """Why a split has no image, in words, with the repair (for messages)."""
        skipped = [reason for record in self.classes[split] for _, reason in record.skipped]
        if not skipped:
            return (f"it has {len(self.classes[split])} classes and no image file; give it "
                    "classes (data.split_fractions, data.class_lists)")
        small = [r for r in skipped if r.startswith(TOO_SMALL)]
        text = f"all its {len(skipped)} images were skipped"
        if small:
            text += (f", {len(small)} of them smaller than data.min_image_side allows (e.g. "
                     f"{small[0][len(TOO_SMALL):].strip()}): lower data.min_image_side (0 keeps "
                     "every image) or use larger images")
        if len(small) < len(skipped):
            text += (f"; {len(skipped) - len(small)} unreadable, e.g. "
                     f"{next(r for r in skipped if not r.startswith(TOO_SMALL))}")
        return text + f" (each is listed in {self.directory}/{SPEC_FILE})"

    def files(self, split: str, classes: Sequence[int]) -> tuple[list[str], np.ndarray]:
        """Absolute shard paths of some classes of a split, class-major, and each first index."""
        files, first = [], []
        for c in classes:
            first.append(len(files))
            files += [_join(self.directory, s["file"]) for s in self.classes[split][c].shards]
        return files, np.asarray(first, np.int64)

    def read(self, split: str, classes: Sequence[int]) -> np.ndarray:
        """The images of some classes of a split in memory, class-major: uint8 ``[T, H, W, C]``."""
        files, _ = self.files(split, classes)
        total = sum(self.classes[split][c].count for c in classes)
        out = np.empty((total, *self.image_shape), np.uint8)
        flat = out.reshape(-1)
        position = 0
        for path in files:
            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read()
            flat[position:position + len(data)] = np.frombuffer(data, np.uint8)
            position += len(data)
        if position != flat.size:
            raise DataError(f"prepared data in {self.directory!r} holds {position} bytes for "
                            f"split {split!r}, its spec says {flat.size}; delete the directory to "
                            "prepare it again")
        return out


def cache_key(fingerprint: str, *, image_size: int, channels: int, resize: str,
              min_side: int) -> str:
    """The name of the prepared directory of a listing at a size: a digest of everything used."""
    text = json.dumps([FORMAT_VERSION, fingerprint, image_size, channels, resize, min_side])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def preparation_lock(directory: str) -> Iterator[None]:
    """Serialises preparation between processes sharing a local directory.

    Several workers of one machine start at once; without the lock they would all prepare the
    same data. The first prepares, the others wait and then reuse it. Remote directories
    (``gs://``) are not locked: prepare them once before starting a cluster.
    """
    if "://" in directory:
        yield
        return
    lock_path = os.path.normpath(directory) + ".lock"
    with writing(directory):
        os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
        lock = open(lock_path, "a")
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _join(directory: str, name: str) -> str:
    # Shard names are relative with "/" separators, on every file system.
    return directory.rstrip("/") + "/" + name


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with (open(path, "rb") if "://" not in path else tf.io.gfile.GFile(path, "rb")) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: str, data: bytes) -> None:
    """Writes through a temporary file renamed into place: a reader never sees half a file.

    A failed write (a full disk) removes its temporary file, so nothing half-written is left.
    """
    tmp = path + TMP_SUFFIX
    try:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        with contextlib.suppress(OSError, tf.errors.OpError):
            tf.io.gfile.remove(tmp)
        raise


def _os_reason(error: BaseException) -> str:
    """What a failed file operation means, in words (TensorFlow's errors carry no errno)."""
    number = getattr(error, "errno", None)
    text = str(getattr(error, "strerror", None) or getattr(error, "message", None) or error)
    lowered = text.lower()
    if number == errno.ENOSPC or "no space left" in lowered:
        return "the disk is full (no space left on device)"
    if number == errno.EDQUOT or "quota" in lowered:
        return "the disk quota is exceeded"
    if number == errno.EROFS or "read-only file system" in lowered:
        return "the file system is read-only"
    if number in (errno.EACCES, errno.EPERM) or "permission denied" in lowered:
        return "permission denied"
    if number in (errno.ENOTDIR, errno.EEXIST) or "not a directory" in lowered:
        return "a part of the path is a file, not a directory"
    return text.splitlines()[0] if text else type(error).__name__


class PreparedWriteError(DataError):
    """The prepared directory cannot be written (full disk, read-only, a file in the way)."""


@contextlib.contextmanager
def writing(directory: str) -> Iterator[None]:
    """Turns a failed write into one :class:`PreparedWriteError` naming the directory and repair.

    Shards are renamed into place whole and a class is recorded as done only after all its
    shards are (see :func:`prepare`), so what a failed write leaves is never trusted by a rerun.
    """
    try:
        yield
    except (OSError, tf.errors.OpError) as e:
        raise PreparedWriteError(
            f"cannot write the prepared data in {directory!r}: {_os_reason(e)}; free space or "
            "make it writable, or set data.prepared_dir to a writable directory, then rerun (the "
            "classes already prepared there are kept and checked)") from e


Decoder = Callable[..., np.ndarray]


def _default_decoder() -> Decoder:
    from tfmeta.data import image_decode

    return image_decode.decode


def _too_small_error() -> type:
    from tfmeta.data import image_decode

    return image_decode.TooSmallError


@dataclasses.dataclass(frozen=True)
class _Geometry:
    image_size: int
    channels: int
    resize: str
    min_side: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)

    @property
    def records_per_shard(self) -> int:
        return max(1, TARGET_SHARD_BYTES // int(np.prod(self.shape)))


def _decode_all(cls: ClassImages, geometry: _Geometry, decode: Decoder,
                pool: concurrent.futures.Executor
                ) -> Iterator[tuple[str, np.ndarray | None, str]]:
    """(item name, pixels or None, reason skipped) of each item of a class, in order."""
    too_small = _too_small_error()

    def one(i: int) -> tuple[str, np.ndarray | None, str]:
        name = cls.item_names[i]
        try:
            pixels = decode(cls.items[i], name=name, size=geometry.image_size,
                            channels=geometry.channels, resize=geometry.resize,
                            min_side=geometry.min_side)
        except too_small as e:
            return name, None, f"{TOO_SMALL} {e}"
        except DataError as e:
            return name, None, f"unreadable: {e}"
        if pixels.shape != geometry.shape or pixels.dtype != np.uint8:
            raise DataError(f"decoding {name!r} gave {pixels.dtype} {pixels.shape}, expected "
                            f"uint8 {geometry.shape}")
        return name, pixels, ""

    # Threads: decoding and resizing release the GIL in PIL, so they use every core.
    return pool.map(one, range(len(cls.items)))


def _prepare_class(directory: str, split: str, index: int, cls: ClassImages,
                   geometry: _Geometry, decode: Decoder,
                   pool: concurrent.futures.Executor) -> tuple[ClassRecord, dict[str, Any]]:
    """Decodes one class into its shards; returns its record and its pixel sums."""
    with writing(directory):
        tf.io.gfile.makedirs(_join(directory, split))
    shards, skipped, buffer, kept = [], [], [], []
    channel_sum = np.zeros(geometry.channels)
    channel_sq = np.zeros(geometry.channels)
    count = 0

    def flush() -> None:
        name = f"{split}/c{index:05d}_{len(shards):04d}.rec"
        data = b"".join(a.tobytes() for a in buffer)
        with writing(directory):
            _write_atomically(_join(directory, name), data)
        shards.append({"file": name, "count": len(buffer),
                       "sha256": hashlib.sha256(data).hexdigest()})
        buffer.clear()

    for name, pixels, reason in _decode_all(cls, geometry, decode, pool):
        if pixels is None:
            skipped.append((name, reason))
            continue
        x = pixels.reshape(-1, geometry.channels).astype(np.float64) / 255.0
        channel_sum += x.sum(axis=0)
        channel_sq += (x * x).sum(axis=0)
        buffer.append(pixels)
        kept.append(name)
        count += 1
        if len(buffer) == geometry.records_per_shard:
            flush()
    if buffer:
        flush()
    stats = {"sum": channel_sum.tolist(), "sum_sq": channel_sq.tolist(),
             "pixels": count * geometry.image_size**2}
    return ClassRecord(cls.name, count, tuple(shards), tuple(skipped), tuple(kept)), stats


class _Progress:
    """``progress.jsonl``, one line per finished class, kept on disk after every line.

    Local files are appended and synced; object stores cannot append, so there the file is
    rewritten whole (it stays small: one line per class).
    """

    def __init__(self, path: str):
        self._path = path
        self._text = ""
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path, "rb") as f:
                self._text = f.read().decode("utf-8", errors="replace")
            if self._text and not self._text.endswith("\n"):  # a line cut by an interruption
                self._text = self._text[:self._text.rfind("\n") + 1]
        _write_atomically(path, self._text.encode())

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def append(self, line: str) -> None:
        self._text += line
        if "://" in self._path:
            _write_atomically(self._path, self._text.encode())
            return
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def _read_progress(directory: str, listing: Listing) -> dict[tuple[str, int], dict[str, Any]]:
    """Classes finished by an earlier, interrupted preparation, their shards verified."""
    path = _join(directory, PROGRESS_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    done = {}
    with tf.io.gfile.GFile(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            split, index = str(entry["split"]), int(entry["index"])
            record = ClassRecord.from_dict(entry["record"])
            files = [_join(directory, s["file"]) for s in record.shards]
            sums = [s["sha256"] for s in record.shards]
            [float(v) for key in ("sum", "sum_sq") for v in entry["stats"][key]]
            int(entry["stats"]["pixels"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a line cut by the interruption or damaged: its class is prepared again
        classes = listing.splits.get(split, [])
        if not 0 <= index < len(classes) or classes[index].name != record.name:
            continue  # the listing changed under the same key: prepare the class again
        if all(tf.io.gfile.exists(f) and _sha256(f) == h for f, h in zip(files, sums)):
            done[(split, index)] = entry
    return done


def prepare(listing: Listing, directory: str, *, image_size: int, channels: int,
            resize: str = "stretch", min_side: int = 0, source: str = "",
            settings: dict[str, Any] | None = None, decode: Decoder | None = None,
            workers: int | None = None) -> Prepared:
    """Prepares a listing into ``directory`` (or reuses it), resuming an interrupted preparation.

    Items that cannot be decoded, or whose shorter side is below ``min_side``, are skipped and
    recorded with the reason (see :attr:`Prepared.classes` ``skipped`` and the run's data summary);
    a class left with no image is kept with a count of 0 (the episode layer leaves out classes with
    too few images).

    Args:
      listing: what to prepare.
      directory: where (created; its name should be :func:`cache_key`).
      image_size: side of the prepared images.
      channels: 1 or 3.
      resize: ``"stretch"`` or ``"crop"`` (see :func:`tfmeta.data.image_decode.decode`).
      min_side: smallest shorter side accepted.
      source: the source string, recorded in the spec.
      settings: the listing's settings (class split, ...), recorded in the spec, so that the
        prepared data can be found again when the source is gone.
      decode: decoding function (default :func:`tfmeta.data.image_decode.decode`).
      workers: decoding threads (default: the CPU count).

    Returns:
      The prepared data.

    Raises:
      DataError: the directory holds a spec of something else, or a decoder error that is not
        about one image.
      PreparedWriteError: the directory cannot be written (full disk, read-only, a file in the
        way); what was written is either complete and recorded, or never trusted.
    """
    decode = decode or _default_decoder()
    geometry = _Geometry(image_size, channels, resize, min_side)
    with writing(directory):
        tf.io.gfile.makedirs(directory)
    with preparation_lock(directory):
        if tf.io.gfile.exists(_join(directory, SPEC_FILE)):
            prepared = load(directory)
            if prepared.fingerprint != listing.fingerprint or prepared.image_shape != geometry.shape:
                raise DataError(f"prepared directory {directory!r} holds other data (fingerprint "
                                f"or image shape differ); delete it or choose another")
            return prepared
        done = _read_progress(directory, listing)
        with writing(directory):
            _remove_temporary_files(directory)
        if done:
            logging.info("Resuming the preparation in %s: %d classes already done.", directory,
                         len(done))
        with writing(directory):
            progress = _Progress(_join(directory, PROGRESS_FILE))
        with progress, \
                concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            total = sum(len(v) for v in listing.splits.values())
            for split in SPLITS:
                for index, cls in enumerate(listing.splits[split]):
                    if (split, index) in done:
                        continue
                    record, stats = _prepare_class(directory, split, index, cls, geometry,
                                                   decode, pool)
                    entry = {"split": split, "index": index, "record": record.to_dict(),
                             "stats": stats}
                    with writing(directory):
                        progress.append(json.dumps(entry) + "\n")
                    done[(split, index)] = entry
                    if len(done) % 50 == 0:
                        logging.info("Prepared %d of %d classes in %s.", len(done), total,
                                     directory)
        spec = _spec(listing, done, geometry, source, settings)
        with writing(directory):
            _write_atomically(_join(directory, SPEC_FILE),
                              (json.dumps(spec, indent=1) + "\n").encode())
            tf.io.gfile.remove(_join(directory, PROGRESS_FILE))
    return load(directory)


def _remove_temporary_files(directory: str) -> None:
    """Removes the temporary files a killed preparation left (never anything else)."""
    for folder in [directory] + [_join(directory, split) for split in SPLITS]:
        if tf.io.gfile.isdir(folder):
            for name in tf.io.gfile.listdir(folder):
                if name.endswith(TMP_SUFFIX):
                    tf.io.gfile.remove(_join(folder, name))


def _spec(listing: Listing, done: dict[tuple[str, int], dict[str, Any]], geometry: _Geometry,
          source: str, settings: dict[str, Any] | None) -> dict[str, Any]:
    classes, stats = {}, {}
    for split in SPLITS:
        entries = [done[(split, i)] for i in range(len(listing.splits[split]))]
        classes[split] = [e["record"] for e in entries]
        stats[split] = {
            "sum": np.sum([e["stats"]["sum"] for e in entries] or [[0.0] * geometry.channels],
                          axis=0).tolist(),
            "sum_sq": np.sum([e["stats"]["sum_sq"] for e in entries]
                             or [[0.0] * geometry.channels], axis=0).tolist(),
            "pixels": int(sum(e["stats"]["pixels"] for e in entries)),
        }
    return {"format": FORMAT_VERSION, "source": source, "origin": listing.origin,
            "fingerprint": listing.fingerprint, "image_shape": list(geometry.shape),
            "records_per_shard": geometry.records_per_shard, "classes": classes, "stats": stats,
            "skipped": [list(s) for s in listing.skipped], "settings": settings or {}}


def _damaged(path: str, directory: str, what: str) -> DataError:
    return DataError(f"{path!r} is damaged ({what}); delete {directory!r} and rerun to prepare "
                     "the data again")


def _parse_spec(spec: Any, directory: str, path: str) -> Prepared:
    """The :class:`Prepared` a spec describes; DataError naming the file if it is malformed."""
    if not isinstance(spec, dict):
        raise _damaged(path, directory, f"a JSON {type(spec).__name__}, not an object")
    if spec.get("format") != FORMAT_VERSION:
        raise DataError(f"{path!r} has format {spec.get('format')!r}; this tfmeta reads format "
                        f"{FORMAT_VERSION}: delete {directory!r} to prepare it again")
    try:
        shape = tuple(int(v) for v in spec["image_shape"])
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image_shape {list(shape)}")
        classes = {s: [ClassRecord.from_dict(c) for c in spec["classes"][s]] for s in SPLITS}
        for records in classes.values():
            for record in records:
                for shard in record.shards:
                    if not (isinstance(shard["file"], str) and isinstance(shard["sha256"], str)
                            and isinstance(shard["count"], int)):
                        raise TypeError(f"shard {shard!r} of class {record.name!r}")
        prepared = Prepared(
            directory=directory, image_shape=shape,
            records_per_shard=int(spec["records_per_shard"]), classes=classes,
            source=str(spec["source"]), origin=str(spec["origin"]),
            fingerprint=str(spec["fingerprint"]),
            skipped=[(str(a), str(b)) for a, b in spec["skipped"]],
            stats={s: {"sum": [float(v) for v in spec["stats"][s]["sum"]],
                       "sum_sq": [float(v) for v in spec["stats"][s]["sum_sq"]],
                       "pixels": int(spec["stats"][s]["pixels"])} for s in SPLITS})
    except KeyError as e:
        raise _damaged(path, directory, f"the key {e.args[0]!r} is missing") from e
    except (TypeError, ValueError, AttributeError) as e:
        raise _damaged(path, directory, f"a value of the wrong type or shape: {e}") from e
    return prepared


def read_spec(directory: str) -> dict[str, Any]:
    """The raw ``spec.json`` of a prepared directory (DataError naming it if unreadable)."""
    path = _join(directory, SPEC_FILE)
    if not tf.io.gfile.exists(path):
        raise DataError(f"{directory!r} is not prepared data: it has no {SPEC_FILE}")
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, tf.errors.OpError) as e:
        raise DataError(f"cannot read {path!r}: {_os_reason(e)}; make it readable, or delete "
                        f"{directory!r} to prepare it again") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _damaged(path, directory, f"not JSON: {e}") from e


def load(directory: str) -> Prepared:
    """Reads a prepared directory's spec and checks its shards: sizes, and their SHA-256.

    Every shard's size is checked on every load. Each shard's SHA-256 is recomputed on the
    first load, and then again only for the shards whose size, modification time or inode
    changed since (a corrupted, replaced or swapped shard), or all of them when the spec changed;
    what was checked is recorded in ``verified.json`` (not written when the directory is
    read-only; then every load recomputes every checksum). On a remote file system (``gs://``)
    only the sizes are checked on load; :func:`verify` recomputes every checksum anywhere.

    Raises:
      DataError: no spec, another format version, a damaged spec, or a missing, wrongly sized or
        changed shard (naming it and the repair).
    """
    path = _join(directory, SPEC_FILE)
    prepared = _parse_spec(read_spec(directory), directory, path)
    for split in SPLITS:
        for record in prepared.classes[split]:
            if sum(s["count"] for s in record.shards) != record.count:
                raise _damaged(path, directory, f"class {record.name!r} has {record.count} images "
                                                "but its shards hold a different number")
            for shard in record.shards:
                file = _join(directory, shard["file"])
                expected = shard["count"] * prepared.record_bytes
                size = tf.io.gfile.stat(file).length if tf.io.gfile.exists(file) else None
                if size != expected:
                    raise DataError(
                        f"prepared shard {file!r} of class {record.name!r} is "
                        f"{'missing' if size is None else f'{size} bytes'}; its spec says "
                        f"{expected} bytes: delete {directory!r} and rerun to prepare it again")
    if "://" not in directory:
        _check_changed_shards(prepared)
    return prepared


def _shard_state(file: str) -> list[int]:
    st = os.stat(file)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _spec_digest(directory: str) -> str:
    with open(_join(directory, SPEC_FILE), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _read_verified(directory: str, spec_digest: str) -> dict[str, list[int]]:
    """``{shard: state}`` of the shards checked against this spec (empty if none or damaged)."""
    try:
        with open(_join(directory, VERIFIED_FILE), encoding="utf-8") as f:
            verified = json.load(f)
        if verified["spec_sha256"] != spec_digest:
            return {}
        return {str(k): list(v) for k, v in verified["shards"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # never written, unreadable or damaged: check every shard again


def _check_changed_shards(prepared: Prepared) -> None:
    """Recomputes the SHA-256 of the shards changed since they were last checked (local)."""
    directory = prepared.directory
    digest = _spec_digest(directory)
    verified = _read_verified(directory, digest)
    shards = [(record, shard) for split in SPLITS for record in prepared.classes[split]
              for shard in record.shards]
    states = {shard["file"]: _shard_state(_join(directory, shard["file"]))
              for _, shard in shards}
    todo = [(r, s) for r, s in shards if verified.get(s["file"]) != states[s["file"]]]
    if not todo:
        return
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        # hashlib releases the GIL on large buffers: the threads use every core.
        actual = list(pool.map(lambda rs: _sha256(_join(directory, rs[1]["file"])), todo))
    for (record, shard), sha in zip(todo, actual):
        if sha != shard["sha256"]:
            raise _changed_shard(prepared, record, shard)
    try:
        _write_atomically(_join(directory, VERIFIED_FILE),
                          json.dumps({"spec_sha256": digest, "shards": states}).encode())
    except (OSError, tf.errors.OpError) as e:  # a read-only store: check again next time
        logging.info("Prepared data in %s checked; cannot record it (%s), so the next run checks "
                     "it again.", directory, _os_reason(e))


def _changed_shard(prepared: Prepared, record: ClassRecord, shard: dict) -> DataError:
    return DataError(f"prepared shard {_join(prepared.directory, shard['file'])!r} of class "
                     f"{record.name!r} does not match its checksum in {SPEC_FILE}: the prepared "
                     f"data is damaged; delete {prepared.directory!r} and rerun to prepare it "
                     "again")


def verify(prepared: Prepared) -> None:
    """Recomputes every shard's checksum against the spec.

    Raises:
      DataError: naming the first shard whose content changed.
    """
    for split in SPLITS:
        for record in prepared.classes[split]:
            for shard in record.shards:
                file = _join(prepared.directory, shard["file"])
                if _sha256(file) != shard["sha256"]:
                    raise _changed_shard(prepared, record, shard)
