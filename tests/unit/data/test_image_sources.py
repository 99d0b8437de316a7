"""Source strings, the folder source, preparation reuse, and task 'images' episodes from a config."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from tfmeta.run import config as config_lib
from tfmeta.data import image_sources
from tfmeta.run import tasks
from tfmeta.data.class_listing import DataError


def write_class_folders(root, counts, *, size=(10, 12), mode="RGB", seed=0, ext=".png"):
    """``root/class<i>/<j>.png`` with ``counts[i]`` random colour images each."""
    rng = np.random.default_rng(seed)
    for c, n in enumerate(counts):
        folder = os.path.join(root, f"class{c:02d}")
        os.makedirs(folder, exist_ok=True)
        for j in range(n):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).convert(mode).save(os.path.join(folder, f"{j:03d}{ext}"))
    return str(root)


def images_config(source, **data):
    c = config_lib.base_config()
    c.task = "images"
    c.data.source = source
    c.data.image_size, c.data.channels = 8, 3
    c.data.ways, c.data.shots, c.data.queries = 2, 1, 2
    c.data.rotate = False
    for key, value in data.items():
        c.data[key] = value
    return c


def test_parse_names_what_is_allowed():
    assert image_sources.parse("folder:/x/y") == ("folder", "/x/y")
    assert image_sources.parse("tfds:cifar100/config") == ("tfds", "cifar100/config")
    assert image_sources.parse("cub") == ("cub", "")
    with pytest.raises(DataError, match="not a known source; allowed: folder:PATH"):
        image_sources.parse("folders:/x")
    with pytest.raises(DataError, match="needs a path"):
        image_sources.parse("miniimagenet")
    with pytest.raises(DataError, match="'cifarfs' takes no path"):
        image_sources.parse("cifarfs:/x")


def test_folder_classes_split_by_fractions_reproducibly(tmp_path):
    root = write_class_folders(tmp_path / "photos", [2] * 25)
    a = image_sources.folder_listing(root, fractions=(0.6, 0.2, 0.2), split_seed=3)
    b = image_sources.folder_listing(root, fractions=(0.6, 0.2, 0.2), split_seed=3)
    c = image_sources.folder_listing(root, fractions=(0.6, 0.2, 0.2), split_seed=4)
    names = {s: [x.name for x in a.splits[s]] for s in a.splits}
    assert [len(names[s]) for s in ("train", "validation", "test")] == [15, 5, 5]
    assert names == {s: [x.name for x in b.splits[s]] for s in b.splits}
    assert names != {s: [x.name for x in c.splits[s]] for s in c.splits}
    assert sorted(sum(names.values(), [])) == [f"class{i:02d}" for i in range(25)]
    assert "seed 3" in a.origin


def test_split_folders_and_class_lists(tmp_path):
    for split, first in (("train", 0), ("val", 10), ("test", 20)):
        write_class_folders(tmp_path / "mini" / split, [0] * first + [2, 2], seed=first)
    # write_class_folders names classes by index; empty leading indices create no folders
    listing = image_sources.folder_listing(str(tmp_path / "mini"))
    assert [c.name for c in listing.splits["validation"]] == ["class10", "class11"]
    assert "split folders" in listing.origin
    # The split folders decide the split: fractions or a seed given besides are refused, not ignored.
    with pytest.raises(DataError, match=r"has split folders.*data.split_fractions \(0.5, 0.25, "
                                        r"0.25\) and data.split_seed 1 would be ignored"):
        image_sources.folder_listing(str(tmp_path / "mini"), fractions=(0.5, 0.25, 0.25))
    with pytest.raises(DataError, match="data.split_seed 7 would be ignored"):
        image_sources.folder_listing(str(tmp_path / "mini"), split_seed=7)
    flat = write_class_folders(tmp_path / "flat", [2] * 4)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("class00\nclass02\n")
    (lists / "val.txt").write_text("# held out\nclass01\n")
    listing = image_sources.folder_listing(flat, class_lists=str(lists))
    assert [c.name for c in listing.splits["train"]] == ["class00", "class02"]
    assert [c.name for c in listing.splits["test"]] == []
    assert [s[1] for s in listing.skipped] == ["class folder in no class list"]
    (lists / "test.txt").write_text("class09\n")
    with pytest.raises(DataError, match=r"1 listed classes are not in folder.*class09"):
        image_sources.folder_listing(flat, class_lists=str(lists))


def test_duplicate_class_across_split_folders_is_an_error(tmp_path):
    write_class_folders(tmp_path / "d" / "train", [2, 2])
    write_class_folders(tmp_path / "d" / "test", [2])
    with pytest.raises(DataError, match="'class00' appears in splits 'train' and 'test'"):
        image_sources.folder_listing(str(tmp_path / "d"))


def test_non_images_empty_folders_and_stray_files_are_skipped_and_recorded(tmp_path):
    root = write_class_folders(tmp_path / "p", [3, 3])
    (tmp_path / "p" / "class00" / "notes.txt").write_text("hello")
    (tmp_path / "p" / "README.md").write_text("about")
    os.makedirs(tmp_path / "p" / "empty")
    (tmp_path / "p" / ".hidden").mkdir()
    listing = image_sources.folder_listing(root, fractions=(1.0, 0.0, 0.0))
    reasons = {os.path.basename(path): why for path, why in listing.skipped}
    assert reasons == {"notes.txt": "not an image file (by its extension)",
                       "README.md": "a file outside any class folder",
                       "empty": "empty class folder (no image files)",
                       ".hidden": image_sources.HIDDEN_FOLDER}
    assert [len(c.items) for c in listing.splits["train"]] == [3, 3]


def test_hidden_files_and_folders_are_recorded_not_read(tmp_path):
    root = write_class_folders(tmp_path / "p", [3, 3])
    (tmp_path / "p" / "class00" / ".DS_Store").write_bytes(b"x")
    write_class_folders(tmp_path / "p" / "class01" / ".thumbnails", [1])
    listing = image_sources.folder_listing(root, fractions=(1.0, 0.0, 0.0))
    assert sorted(listing.skipped) == [
        (str(tmp_path / "p" / "class00" / ".DS_Store"), image_sources.HIDDEN_FILE),
        (str(tmp_path / "p" / "class01" / ".thumbnails"), image_sources.HIDDEN_FOLDER)]
    assert [len(c.items) for c in listing.splits["train"]] == [3, 3]


def test_symlinked_subfolders_are_followed_once_and_cycles_recorded(tmp_path):
    root = write_class_folders(tmp_path / "p", [2, 2])
    write_class_folders(tmp_path / "elsewhere", [3])
    os.symlink(tmp_path / "elsewhere" / "class00", tmp_path / "p" / "class00" / "more")
    # The same folder twice in one class, and a link back up: kept once, not looped.
    os.symlink(tmp_path / "elsewhere" / "class00", tmp_path / "p" / "class00" / "again")
    os.symlink(tmp_path / "p" / "class01", tmp_path / "p" / "class01" / "loop")
    listing = image_sources.folder_listing(root, fractions=(1.0, 0.0, 0.0))
    counts = {c.name: len(c.items) for c in listing.splits["train"]}
    assert counts == {"class00": 5, "class01": 2}
    reasons = sorted(why.split(" ")[0:3] for _, why in listing.skipped)
    assert reasons == [["a", "link", "back"]] + [["the", "same", "file"]] * 3
    # The fingerprint sees the linked files too, so a change there prepares anew.
    before = image_sources._stat_fingerprint(root)
    (tmp_path / "elsewhere" / "class00" / "000.png").write_bytes(b"changed")
    assert image_sources._stat_fingerprint(root) != before


def test_a_symlinked_class_folder_in_two_splits_is_refused(tmp_path):
    write_class_folders(tmp_path / "d" / "train", [2, 2])
    os.makedirs(tmp_path / "d" / "val")
    os.makedirs(tmp_path / "d" / "test")
    os.symlink(tmp_path / "d" / "train" / "class01", tmp_path / "d" / "val" / "birds")
    os.symlink(tmp_path / "d" / "train" / "class01", tmp_path / "d" / "test" / "birds2")
    with pytest.raises(DataError, match="class folders .*class01' and .*/birds' are the same "
                                        "folder .* remove one of them"):
        image_sources.folder_listing(str(tmp_path / "d"))
    os.remove(tmp_path / "d" / "test" / "birds2")
    os.symlink(tmp_path / "d" / "train" / "class01" / "000.png",
               tmp_path / "d" / "train" / "class00" / "x.png")
    with pytest.raises(DataError, match="are the same file .* an image must belong to one class"):
        image_sources.folder_listing(str(tmp_path / "d"))


def test_an_unreadable_class_folder_is_named_not_called_empty(tmp_path, monkeypatch):
    root = write_class_folders(tmp_path / "p", [2, 2])
    scandir = os.scandir

    def denied(path):  # chmod 0 is not enough: tests may run as root
        if str(path).endswith("class01"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(DataError, match=r"cannot read folder .*class01' of the source: "
                                        "Permission denied; make it readable"):
        image_sources.folder_listing(root)


def test_missing_folder_and_no_classes_are_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist or is not a directory"):
        image_sources.folder_listing(str(tmp_path / "nope"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="has no class folders with images"):
        image_sources.folder_listing(str(tmp_path / "nothing"))


def test_preparation_is_reused_and_redone_when_the_folder_changes(tmp_path, monkeypatch):
    root = write_class_folders(tmp_path / "p", [3, 3, 3, 3])
    kwargs = dict(image_size=8, channels=3, prepared_dir=str(tmp_path / "prep"),
                  fractions=(0.5, 0.25, 0.25))
    first = image_sources.prepare(f"folder:{root}", **kwargs)
    assert first.image_shape == (8, 8, 3)

    def no_listing(*args, **kw):
        raise AssertionError("a prepared source is not listed again")

    with monkeypatch.context() as m:
        m.setattr(image_sources, "folder_listing", no_listing)
        again = image_sources.prepare(f"folder:{root}", **kwargs)
    assert again.directory == first.directory
    Image.new("RGB", (9, 9)).save(os.path.join(root, "class00", "new.png"))
    changed = image_sources.prepare(f"folder:{root}", **kwargs)
    assert changed.directory != first.directory


def test_corrupt_and_too_small_images_are_skipped_with_counts(tmp_path):
    root = write_class_folders(tmp_path / "p", [4, 4, 4])
    (tmp_path / "p" / "class00" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    Image.new("RGB", (3, 30)).save(tmp_path / "p" / "class01" / "tiny.png")
    c = images_config(f"folder:{root}", split_fractions=(1.0, 0.0, 0.0), min_image_side=5,
                      prepared_dir=str(tmp_path / "prep"))
    source = tasks.build(c)
    summary = source.data_summary()
    train = summary["splits"]["train"]
    assert train["images"] == 12 and train["images_skipped"] == 2
    reasons = {os.path.basename(name): why for name, why in train["skipped"]}
    assert reasons["broken.png"].startswith("unreadable") and "broken.png" in reasons["broken.png"]
    assert reasons["tiny.png"].startswith("too small")


def test_images_task_episodes_summary_and_left_out_classes(tmp_path):
    root = write_class_folders(tmp_path / "p", [3, 5, 2, 6, 4, 1])
    c = images_config(f"folder:{root}", split_fractions=(1.0, 0.0, 0.0),
                      prepared_dir=str(tmp_path / "prep"), normalize=True)
    config_lib.validate(c)
    source = tasks.build(c)
    assert source.input_shape == (8, 8, 3) and source.num_outputs == 2
    assert source.split_classes() == {"train": 4, "validation": 0, "test": 0}
    summary = source.data_summary()
    assert summary["splits"]["train"]["classes_left_out"] == {"class02": 2, "class05": 1}
    assert summary["splits"]["train"]["images_used"]["class01"] == [
        os.path.join(root, "class01", f"{i:03d}.png") for i in range(5)]
    assert summary["storage"] == "memory"
    transform = source.input_transform()
    assert len(transform.mean) == 3 and all(s > 0 for s in transform.std)
    batch = next(iter(source.make_dataset("train", 0, 4, 0, 0)))
    assert batch["support_x"].shape == (4, 2, 8, 8, 3)
    assert batch["query_x"].shape == (4, 4, 8, 8, 3)
    # Normalised with the meta-train split's statistics: about zero mean, unit spread.
    x = batch["query_x"].numpy()
    assert abs(float(x.mean())) < 0.5 and 0.5 < float(x.std()) < 1.5
    c.data.ways = 5  # a task source reads its config once, when built
    source = tasks.build(c)
    with pytest.raises(config_lib.ConfigError, match=r"'train' split .* has only 4 usable "
                                                     r"classes .* 2 classes are left out for fewer "
                                                     r"images, e.g. 'class02' \(2\), 'class05' "
                                                     r"\(1\): .* every class and image is listed in "
                                                     r".*data_summary.json"):
        config_lib.check_split_classes(c, source.split_classes())
    written = json.loads(open(os.path.join(summary["prepared_dir"], "data_summary.json")).read())
    assert written["splits"]["train"]["images_used"] == summary["splits"]["train"]["images_used"]


def test_stream_and_memory_storage_give_the_same_batches(tmp_path):
    root = write_class_folders(tmp_path / "p", [3, 4, 5, 3])
    batches = []
    for storage in ("memory", "stream"):
        c = images_config(f"folder:{root}", split_fractions=(1.0, 0.0, 0.0), storage=storage,
                          prepared_dir=str(tmp_path / "prep"), augment=True, crop_padding=2)
        source = tasks.build(c)
        assert source.data_summary()["storage"] == storage
        batches.append(next(iter(source.make_dataset("train", 0, 3, 7, 5))))
    for key in batches[0]:
        np.testing.assert_array_equal(batches[0][key].numpy(), batches[1][key].numpy())


def test_auto_storage_streams_above_the_memory_limit(tmp_path):
    root = write_class_folders(tmp_path / "p", [3, 3, 3])
    c = images_config(f"folder:{root}", split_fractions=(1.0, 0.0, 0.0), memory_limit_mb=0,
                      prepared_dir=str(tmp_path / "prep"))
    assert tasks.build(c).data_summary()["storage"] == "stream"


def test_image_episodes_from_python_match_the_config_path(tmp_path):
    import tfmeta

    root = write_class_folders(tmp_path / "p", [3, 4, 5, 3])
    kwargs = dict(split_fractions=(1.0, 0.0, 0.0), prepared_dir=str(tmp_path / "prep"))
    ds = tfmeta.image_episodes(f"folder:{root}", "train", ways=2, shots=1, queries=2,
                               image_size=8, seed=4, batch_size=3, **kwargs)
    c = images_config(f"folder:{root}", **kwargs)
    expected = next(iter(tasks.build(c).make_dataset("train", 0, 3, 4, 0)))
    got = next(iter(ds))
    for key in expected:
        np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy())
    with pytest.raises(config_lib.ConfigError, match="data.storage"):
        tfmeta.image_episodes(f"folder:{root}", storage="disk", **kwargs)


def test_prepared_data_is_used_when_the_source_folder_is_gone(tmp_path, monkeypatch):
    root = write_class_folders(tmp_path / "p", [3, 3, 3, 3])
    kwargs = dict(image_size=8, channels=3, prepared_dir=str(tmp_path / "prep"),
                  fractions=(0.5, 0.25, 0.25))
    first = image_sources.prepare(f"folder:{root}", **kwargs)
    os.rename(root, tmp_path / "moved")
    again = image_sources.prepare(f"folder:{root}/", **kwargs)
    assert again.directory == first.directory and again.classes == first.classes
    # Other settings were never prepared: the source is needed, and its absence is named.
    with pytest.raises(DataError, match="does not exist"):
        image_sources.prepare(f"folder:{root}", **{**kwargs, "split_seed": 2})
    # A damaged shard is still refused without the source.
    shard = os.path.join(first.directory, first.classes["train"][0].shards[0]["file"])
    with open(shard, "r+b") as f:
        f.write(b"\x00\x01\x02")
    with pytest.raises(DataError, match="does not match its checksum"):
        image_sources.prepare(f"folder:{root}", **kwargs)


def test_a_prepared_dir_that_is_a_file_is_refused_before_listing(tmp_path, monkeypatch):
    root = write_class_folders(tmp_path / "p", [3, 3])
    (tmp_path / "prep").write_text("not a directory")
    monkeypatch.setattr(image_sources, "listing", lambda *a, **k: pytest.fail("listed"))
    with pytest.raises(DataError, match=r"data.prepared_dir '.*prep' is a file, not a "
                                        "directory; set data.prepared_dir to a directory"):
        image_sources.prepare(f"folder:{root}", image_size=8, channels=3,
                              prepared_dir=str(tmp_path / "prep"))
    with pytest.raises(DataError, match=r"cannot write the prepared data in .*: a part of the "
                                        "path is a file"):
        image_sources.prepare(f"folder:{root}", image_size=8, channels=3,
                              prepared_dir=str(tmp_path / "prep" / "below"))


def test_class_lists_that_are_not_utf8_or_not_a_directory_are_named(tmp_path):
    from tfmeta.data import class_listing

    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"class list '.*train.txt' is not UTF-8 text \(byte 0xe9 "
                                        r"at offset 3 is not UTF-8\); save it as UTF-8"):
        class_listing.read_class_lists(str(lists))
    (lists / "train.txt").write_bytes("\ufeffcaf\u00e9\n".encode("utf-8"))  # a BOM is fine
    assert class_listing.read_class_lists(str(lists))["train"] == ["caf\u00e9"]
    with pytest.raises(DataError, match=r"data.class_lists '.*train.txt' is a file, not a "
                                        "directory; give the directory that holds train.txt"):
        class_listing.read_class_lists(str(lists / "train.txt"))
    (lists / "test.txt").mkdir()
    with pytest.raises(DataError, match=r"class list '.*test.txt' is a directory; it must be a "
                                        "text file"):
        class_listing.read_class_lists(str(lists))


def test_every_image_too_small_names_min_image_side_not_the_normalisation(tmp_path):
    root = write_class_folders(tmp_path / "p", [3, 3, 3], size=(6, 6))
    c = images_config(f"folder:{root}", split_fractions=(1.0, 0.0, 0.0), normalize=True,
                      prepared_dir=str(tmp_path / "prep"))  # min_image_side 8 > 6
    source = tasks.build(c)
    with pytest.raises(DataError, match=r"split 'train' .* has no image to measure the "
                                        r"normalisation on: all its 9 images were skipped, 9 of "
                                        r"them smaller than data.min_image_side allows \(e.g. "
                                        r"image .* 6x6 pixels, its shorter side 6 is below the "
                                        r"minimum of 8\): lower data.min_image_side"):
        source.input_transform()
    c.data.normalize = False
    with pytest.raises(config_lib.ConfigError, match=r"has no class with at least 3 images "
                                                     r"\(shots \+ queries\): all its 9 images "
                                                     r"were skipped, 9 of them smaller"):
        tasks.build(c).make_dataset("train", 0, 1, 0, 0)


def test_episodes_are_drawn_from_the_prepared_data_once_the_folder_is_gone(tmp_path):
    root = write_class_folders(tmp_path / "p", [3, 3, 3, 3])
    c = images_config(f"folder:{root}", split_fractions=(1.0, 0.0, 0.0),
                      prepared_dir=str(tmp_path / "prep"))
    before = next(iter(tasks.build(c).make_dataset("train", 0, 2, 0, 0)))
    os.rename(root, tmp_path / "moved")
    after = next(iter(tasks.build(c).make_dataset("train", 0, 2, 0, 0)))
    np.testing.assert_array_equal(before["query_x"], after["query_x"])


def test_default_split_is_stated_once_for_the_config_and_the_readers():
    from tfmeta.data import class_listing
    from tfmeta.run import config as config_lib

    data = config_lib.base_config().data
    assert tuple(data.split_fractions) == class_listing.DEFAULT_FRACTIONS
    assert data.split_seed == class_listing.DEFAULT_SPLIT_SEED
