"""Prepared per-class shards: contents, resumable preparation, integrity checks, skipped images."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tfmeta import class_store
from tfmeta.class_listing import ClassImages, DataError, Listing


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
