"""Prepared per-class shards: contents, resumable preparation, integrity checks, skipped images."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tfmeta.data import class_store
from tfmeta.data.class_listing import ClassImages, DataError, Listing


class Interrupted(Exception):
    """Stands for a preparation killed part-way."""


def _decode_arrays(item, *, name, size, channels, resize, min_side):
    if isinstance(item, str):
        raise DataError(f"cannot read image {name!r}: not an image")
    return item


def _listing(counts=(5, 3, 4, 2), size=3, channels=3, fingerprint="f1"):
    rng = np.random.default_rng(0)
    splits = {"train": [], "validation": [], "test": []}
    names = list(splits)
    data = {}
    for c, n in enumerate(counts):
        images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
        data[f"class{c}"] = images
        splits[names[c % 3]].append(ClassImages(f"class{c}", list(images),
                                                [f"class{c}/{i}.png" for i in range(n)]))
    return Listing(splits, fingerprint=fingerprint, origin="generated"), data


def _prepare(listing, directory, decode=_decode_arrays, **kwargs):
    return class_store.prepare(listing, str(directory), image_size=3, channels=3, decode=decode,
                               workers=2, **kwargs)


def test_prepared_shards_hold_every_image_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(class_store, "TARGET_SHARD_BYTES", 2 * 27)  # 2 records per shard
    listing, data = _listing()
    prepared = _prepare(listing, tmp_path / "p")
    assert prepared.records_per_shard == 2
    assert [c.name for c in prepared.classes["train"]] == ["class0", "class3"]
    assert [c.count for c in prepared.classes["train"]] == [5, 2]
    assert len(prepared.classes["train"][0].shards) == 3
    np.testing.assert_array_equal(prepared.read("train", [0, 1]),
                                  np.concatenate([data["class0"], data["class3"]]))
    np.testing.assert_array_equal(prepared.read("train", [1]), data["class3"])
    # The stats are those of pixels / 255 of the split.
    mean, std = prepared.mean_std("train")
    pixels = np.concatenate([data["class0"], data["class3"]]).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-6)
    # A second call reuses the directory.
    assert _prepare(listing, tmp_path / "p", decode=None).classes == prepared.classes


def test_an_interrupted_preparation_resumes_and_verifies_what_it_keeps(tmp_path):
    listing, _ = _listing(counts=(3, 3, 3, 3, 3, 3))
    calls = {"n": 0}

    def failing(item, **kwargs):
        calls["n"] += 1
        if calls["n"] > 9:
            raise Interrupted()
        return _decode_arrays(item, **kwargs)

    with pytest.raises(Interrupted):
        _prepare(listing, tmp_path / "p", decode=failing, )
    progress = (tmp_path / "p" / class_store.PROGRESS_FILE).read_text().splitlines()
    assert len(progress) >= 2 and not (tmp_path / "p" / class_store.SPEC_FILE).exists()
    # Damage a finished class's shard: it must be prepared again, the other kept.
    first = json.loads(progress[0])["record"]["shards"][0]["file"]
    with open(tmp_path / "p" / first, "r+b") as f:
        f.write(b"\xff\xff")
    decoded = []

    def counting(item, *, name, **kwargs):
        decoded.append(name)
        return _decode_arrays(item, name=name, **kwargs)

    resumed = _prepare(listing, tmp_path / "p", decode=counting)
    fresh = _prepare(listing, tmp_path / "fresh")
    assert resumed.classes == fresh.classes
    for split in resumed.classes:
        n = list(range(len(resumed.classes[split])))
        np.testing.assert_array_equal(resumed.read(split, n), fresh.read(split, n))
    redone = {name.split("/")[0] for name in decoded}
    kept = json.loads(progress[1])["record"]["name"]
    assert json.loads(progress[0])["record"]["name"] in redone and kept not in redone
    assert not (tmp_path / "p" / class_store.PROGRESS_FILE).exists()


def test_load_and_verify_name_a_damaged_shard(tmp_path):
    listing, _ = _listing()
    prepared = _prepare(listing, tmp_path / "p")
    shard = os.path.join(prepared.directory, prepared.classes["validation"][0].shards[0]["file"])
    with open(shard, "r+b") as f:
        f.write(b"\x01\x02\x03")  # same size, other content
    with pytest.raises(DataError, match="does not match its checksum"):
        class_store.verify(class_store.load(prepared.directory))
    with open(shard, "ab") as f:
        f.write(b"x")
    with pytest.raises(DataError, match=r"is 82 bytes; its spec says 81 bytes"):
        class_store.load(prepared.directory)
    os.remove(shard)
    with pytest.raises(DataError, match="is missing"):
        class_store.load(prepared.directory)


def test_unreadable_images_are_skipped_with_their_reason(tmp_path):
    listing, _ = _listing(counts=(2, 2, 2))
    bad = ClassImages("broken", ["a.png", "b.png"], ["broken/a.png", "broken/b.png"])
    listing.splits["train"].append(bad)
    prepared = _prepare(listing, tmp_path / "p")
    record = prepared.classes["train"][-1]
    assert record.count == 0 and record.shards == ()
    assert [s[0] for s in record.skipped] == ["broken/a.png", "broken/b.png"]
    assert all("unreadable" in s[1] and "not an image" in s[1] for s in record.skipped)


def test_a_directory_of_other_data_is_refused(tmp_path):
    listing, _ = _listing()
    _prepare(listing, tmp_path / "p")
    other, _ = _listing(fingerprint="other")
    with pytest.raises(DataError, match="holds other data"):
        _prepare(other, tmp_path / "p")


def test_not_prepared_and_other_format_are_clear(tmp_path):
    with pytest.raises(DataError, match="is not prepared data"):
        class_store.load(str(tmp_path))
    (tmp_path / class_store.SPEC_FILE).write_text(json.dumps({"format": 99}))
    with pytest.raises(DataError, match="has format 99"):
        class_store.load(str(tmp_path))


def test_cache_key_changes_with_everything_used():
    base = dict(image_size=84, channels=3, resize="stretch", min_side=8)
    key = class_store.cache_key("f", **base)
    assert key == class_store.cache_key("f", **base)
    assert key != class_store.cache_key("g", **base)
    for field, value in (("image_size", 32), ("channels", 1), ("resize", "crop"), ("min_side", 0)):
        assert key != class_store.cache_key("f", **{**base, field: value})


def test_prepared_directory_on_another_file_system(tmp_path):
    """A prepared directory on a non-local file system (TF's ram:// stands in for gs://)."""
    listing, data = _listing(counts=(3, 2, 2, 4))
    directory = "ram://tfmeta-prepared/p"
    prepared = _prepare(listing, directory)
    again = class_store.load(directory)
    class_store.verify(again)
    np.testing.assert_array_equal(again.read("train", [0, 1]),
                                  np.concatenate([data["class0"], data["class3"]]))
    assert all(f.startswith("ram://") for f in prepared.files("train", [0])[0])


def _shard_path(prepared, split, c=0, s=0):
    return os.path.join(prepared.directory, prepared.classes[split][c].shards[s]["file"])


@pytest.mark.parametrize("damage", ["byte", "swap", "spec"])
def test_a_changed_shard_is_refused_on_load(tmp_path, monkeypatch, damage):
    monkeypatch.setattr(class_store, "TARGET_SHARD_BYTES", 2 * 27)  # 2 records per shard
    listing, _ = _listing()
    prepared = _prepare(listing, tmp_path / "p")
    first, second = _shard_path(prepared, "train", 0, 0), _shard_path(prepared, "train", 0, 1)
    if damage == "byte":
        with open(first, "r+b") as f:
            f.seek(30)
            f.write(bytes([f.read(1)[0] ^ 1]))
    elif damage == "swap":  # two shards of the same size, exchanged
        os.rename(first, first + ".x")
        os.rename(second, first)
        os.rename(first + ".x", second)
    else:
        spec = json.loads((tmp_path / "p" / class_store.SPEC_FILE).read_text())
        spec["classes"]["train"][0]["shards"][0]["sha256"] = "0" * 64
        (tmp_path / "p" / class_store.SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"prepared shard .*c00000_000\d.rec' of class 'class0' "
                                        r"does not match its checksum in spec.json: the prepared "
                                        r"data is damaged; delete .* and rerun"):
        class_store.load(prepared.directory)


def test_checksums_are_recomputed_only_for_changed_shards(tmp_path, monkeypatch):
    listing, _ = _listing()
    prepared = _prepare(listing, tmp_path / "p")  # checked once, recorded
    assert (tmp_path / "p" / class_store.VERIFIED_FILE).exists()
    hashed = []
    real = class_store._sha256
    monkeypatch.setattr(class_store, "_sha256", lambda p: hashed.append(p) or real(p))
    class_store.load(prepared.directory)
    assert hashed == []
    shard = _shard_path(prepared, "test")
    os.utime(shard, ns=(1, 1))  # touched: checked again, found intact
    class_store.load(prepared.directory)
    assert hashed == [shard]
    (tmp_path / "p" / class_store.VERIFIED_FILE).write_text("{damaged")
    class_store.load(prepared.directory)
    assert len(hashed) == 1 + sum(len(c.shards) for cs in prepared.classes.values() for c in cs)


@pytest.mark.parametrize("damage, message", [
    (b"\xff\xfe not json", "not JSON"),
    (b"[1, 2]", "a JSON list, not an object"),
    (json.dumps({"format": 1, "source": "x"}).encode(), "the key 'image_shape' is missing"),
    ("image_shape", "a value of the wrong type"),
    ("shards", "a value of the wrong type"),
])
def test_a_damaged_spec_is_one_error_naming_it(tmp_path, damage, message):
    listing, _ = _listing()
    prepared = _prepare(listing, tmp_path / "p")
    path = tmp_path / "p" / class_store.SPEC_FILE
    if isinstance(damage, bytes):
        path.write_bytes(damage)
    else:
        spec = json.loads(path.read_text())
        if damage == "image_shape":
            spec["image_shape"] = "3x3x3"
        else:
            spec["classes"]["train"][0]["shards"] = [7]
        path.write_text(json.dumps(spec))
    with pytest.raises(DataError, match=rf"spec.json' is damaged \({message}.*\); delete "
                                        rf"'{prepared.directory}' and rerun to prepare"):
        class_store.load(prepared.directory)


def test_a_full_disk_mid_shard_leaves_nothing_a_rerun_trusts(tmp_path, monkeypatch):
    import errno

    monkeypatch.setattr(class_store, "TARGET_SHARD_BYTES", 2 * 27)
    listing, data = _listing(counts=(5, 3, 4, 2))
    real = class_store.tf.io.gfile.GFile
    writes = {"n": 0}

    class FillingFile:
        """Writes half of a shard, then the disk is full."""

        def __init__(self, path, mode="r"):
            self._f = real(path, mode)
            self._path = path

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

        def write(self, data):
            if self._path.endswith(".rec" + class_store.TMP_SUFFIX):
                writes["n"] += 1
                if writes["n"] == 4:
                    self._f.write(data[:len(data) // 2])
                    raise OSError(errno.ENOSPC, "No space left on device")
            return self._f.write(data)

        def read(self, *args):
            return self._f.read(*args)

    monkeypatch.setattr(class_store.tf.io.gfile, "GFile", FillingFile)
    with pytest.raises(class_store.PreparedWriteError,
                       match=r"cannot write the prepared data in .*p': the disk is full \(no space "
                             r"left on device\); free space .* then rerun"):
        _prepare(listing, tmp_path / "p")
    left = sorted(os.listdir(tmp_path / "p" / "train"))
    assert not [f for f in left if f.endswith(class_store.TMP_SUFFIX)]
    assert not (tmp_path / "p" / class_store.SPEC_FILE).exists()
    monkeypatch.setattr(class_store.tf.io.gfile, "GFile", real)
    prepared = _prepare(listing, tmp_path / "p")  # the rerun completes, from verified classes
    np.testing.assert_array_equal(prepared.read("train", [0, 1]),
                                  np.concatenate([data["class0"], data["class3"]]))


def test_a_prepared_directory_under_a_file_or_unwritable_is_one_error(tmp_path, monkeypatch):
    listing, _ = _listing()
    (tmp_path / "file").write_text("x")
    with pytest.raises(class_store.PreparedWriteError,
                       match=r"in .*file/p': a part of the path is a file, not a directory"):
        _prepare(listing, tmp_path / "file" / "p")

    def denied(*args, **kwargs):  # a read-only directory (tests may run as root)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(class_store.tf.io.gfile, "makedirs", denied)
    with pytest.raises(class_store.PreparedWriteError, match=r"p2': permission denied; free "):
        _prepare(listing, tmp_path / "p2")


def test_a_complete_read_only_store_loads_and_checks_every_time(tmp_path, monkeypatch):
    listing, _ = _listing()
    prepared = _prepare(listing, tmp_path / "p")
    os.remove(tmp_path / "p" / class_store.VERIFIED_FILE)

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(class_store, "_write_atomically", read_only)
    assert class_store.load(prepared.directory).classes == prepared.classes
    assert not (tmp_path / "p" / class_store.VERIFIED_FILE).exists()
