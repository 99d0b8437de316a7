"""tfmeta.data.benchmark_sources on each distributed format, generated small in tmp_path.

Every format holds all of the benchmark's classes with 2-3 tiny images each, written in the
format's real layout (file names, pickle keys and dtypes), so the class checks pass and the image
counts differ from the benchmark's (reported, not fatal).
"""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.image_classification import caltech_birds, cifar

from tfmeta.data import benchmark_sources, benchmark_splits
from tfmeta.data.class_listing import SPLITS, DataError

MINI = benchmark_splits.load("miniimagenet")
TIERED = benchmark_splits.load("tieredimagenet")
CUB = benchmark_splits.load("cub")
FC100 = benchmark_splits.load("fc100")
SHORT = {"train": "train", "validation": "val", "test": "test"}


def encoded(value: int, fmt: str = "JPEG", size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value % 256, np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def names(listing) -> dict[str, list[str]]:
    return {split: [c.name for c in classes] for split, classes in listing.splits.items()}


def published(benchmark) -> dict[str, list[str]]:
    return {split: list(benchmark.splits[split]) for split in SPLITS}


# ---------------------------------------------------------------------------- mini-ImageNet

def write_mini_caches(root, *, validation_name="val", edit=None, dump=pickle.dump):
    """mini-imagenet-cache-{train,val,test}.pkl: image k of a split has all pixels k % 256."""
    for split in SPLITS:
        wnids = list(MINI.splits[split])
        if edit:
            wnids = edit(split, wnids)
        images = np.zeros((2 * len(wnids), 84, 84, 3), np.uint8)
        for k in range(len(images)):
            images[k] = (k * 7 + 130) % 256
        data = {"image_data": images,
                "class_dict": {w: [2 * i, 2 * i + 1] for i, w in enumerate(wnids)}}
        short = validation_name if split == "validation" else SHORT[split]
        with open(os.path.join(root, f"mini-imagenet-cache-{short}.pkl"), "wb") as f:
            dump(data, f)


def test_mini_imagenet_pickle_caches(tmp_path, caplog):
    write_mini_caches(tmp_path)
    listing = benchmark_sources.miniimagenet(str(tmp_path))
    assert names(listing) == published(MINI)
    first = listing.splits["test"][0]
    assert first.name == "n01930112"
    assert [i.shape for i in first.items] == [(84, 84, 3)] * 2
    assert first.items[0].base is not None and first.items[0].base is first.items[1].base  # views
    assert [int(i[0, 0, 0]) for i in first.items] == [130, 137]
    assert first.item_names == [f"mini-imagenet-cache-test.pkl[{i}]" for i in (0, 1)]
    assert listing.skipped == []
    differences = benchmark_sources.image_counts(MINI, listing.splits)
    assert len(differences) == 100  # reported, not fatal
    assert (first.name, "2 images; mini-ImageNet has 600 per class") in differences
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"mini-ImageNet in {tmp_path}: 100 image counts differ from "
                                  "the benchmark's (n01532829: 2 images; mini-ImageNet has 600 "
                                  "per class; ")
    assert warnings[0].endswith("; and 95 more); this is not the benchmark")
    assert "Ravi & Larochelle 2017" in listing.origin
    assert "https://github.com/twitter/meta-learning-lstm/blob/" in listing.origin
    assert "mini-ImageNet pickle caches" in listing.origin


def test_mini_imagenet_caches_named_validation(tmp_path):
    write_mini_caches(tmp_path, validation_name="validation")
    assert names(benchmark_sources.miniimagenet(str(tmp_path))) == published(MINI)


class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes, as the caches made with Python 2 hold them."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def test_mini_imagenet_python2_caches(tmp_path):
    def dump(data, f):
        py2 = {b"image_data": data["image_data"],
               b"class_dict": {w.encode(): v for w, v in data["class_dict"].items()}}
        _Python2Pickler(f, protocol=2).dump(py2)

    write_mini_caches(tmp_path, dump=dump)
    with open(tmp_path / "mini-imagenet-cache-test.pkl", "rb") as f:
        with pytest.raises(UnicodeDecodeError):  # what a plain pickle.load makes of them
            pickle.load(f)
    listing = benchmark_sources.miniimagenet(str(tmp_path))
    assert names(listing) == published(MINI)
    assert int(listing.splits["test"][0].items[1][0, 0, 0]) == 137


def test_mini_imagenet_wrong_classes_name_the_split_and_classes(tmp_path):
    def edit(split, wnids):
        if split == "test":  # the last test class swapped for a training class
            return wnids[:-1] + [MINI.splits["train"][0]]
        if split == "train":
            return wnids[1:]
        return wnids

    write_mini_caches(tmp_path, edit=edit)
    with pytest.raises(DataError) as error:
        benchmark_sources.miniimagenet(str(tmp_path))
    message = str(error.value)
    assert message.startswith(f"{tmp_path} does not hold the mini-ImageNet class split")
    assert "split 'train' has 63 classes, expected 64; missing 1, e.g. ['n01532829']" in message
    assert (f"split 'test' has 20 classes, expected 20; missing 1, e.g. "
            f"['{MINI.splits['test'][-1]}']; 1 not of this split, e.g. 'n01532829' "
            "(a train class)") in message
    assert "'validation'" not in message


def test_mini_imagenet_malformed_and_partial_caches(tmp_path):
    write_mini_caches(tmp_path)
    os.remove(tmp_path / "mini-imagenet-cache-val.pkl")
    with pytest.raises(DataError, match=r"has the split files \['mini-imagenet-cache-test.pkl', "
                                        r"'mini-imagenet-cache-train.pkl'\] but not "
                                        r"\['mini-imagenet-cache-val.pkl/"):
        benchmark_sources.miniimagenet(str(tmp_path))
    with open(tmp_path / "mini-imagenet-cache-val.pkl", "wb") as f:
        pickle.dump({"images": np.zeros((2, 84, 84, 3), np.uint8)}, f)
    with pytest.raises(DataError, match=r"not a mini-ImageNet cache: expected 'image_data'.*"
                                        r"found keys \['images'\]"):
        benchmark_sources.miniimagenet(str(tmp_path))
    (tmp_path / "mini-imagenet-cache-val.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"mini-imagenet-cache-val.pkl cannot be read as a pickle"):
        benchmark_sources.miniimagenet(str(tmp_path))


def write_ravi_csvs(root, *, missing_image=None):
    os.makedirs(root / "images")
    for split in SPLITS:
        lines = ["filename,label"]
        for i, wnid in enumerate(MINI.splits[split]):
            for j in range(2 + i % 2):  # 2 or 3 images per class
                filename = f"{wnid}{j + 1:08d}.jpg"
                lines.append(f"{filename},{wnid}")
                if filename != missing_image:
                    (root / "images" / filename).write_bytes(encoded(i + j))
        (root / f"{SHORT[split]}.csv").write_text("\n".join(lines) + "\n")


def test_mini_imagenet_ravi_csvs(tmp_path):
    missing = f"{MINI.splits['validation'][2]}00000001.jpg"  # one of its 2 images
    write_ravi_csvs(tmp_path, missing_image=missing)
    listing = benchmark_sources.miniimagenet(str(tmp_path))
    assert names(listing) == published(MINI)
    second = listing.splits["train"][1]
    assert second.items == [str(tmp_path / "images" / f"{second.name}0000000{j}.jpg")
                            for j in (1, 2, 3)]
    assert (str(tmp_path / "images" / missing), "listed in val.csv, not in images/") \
        in listing.skipped
    assert (MINI.splits["validation"][2], "1 images; mini-ImageNet has 600 per class") \
        in benchmark_sources.image_counts(MINI, listing.splits)
    assert "split CSVs" in listing.origin


def test_mini_imagenet_csv_header_and_images_folder(tmp_path):
    write_ravi_csvs(tmp_path)
    text = (tmp_path / "test.csv").read_text().replace("filename,label", "file,class")
    (tmp_path / "test.csv").write_text(text)
    with pytest.raises(DataError, match=r"test.csv is not one of Ravi & Larochelle's split CSVs: "
                                        r"its header is \['file', 'class'\]"):
        benchmark_sources.miniimagenet(str(tmp_path))
    os.rename(tmp_path / "images", tmp_path / "jpgs")
    with pytest.raises(DataError, match=r"split CSVs but no images/ folder"):
        benchmark_sources.miniimagenet(str(tmp_path))
    os.makedirs(tmp_path / "images")
    (tmp_path / "test.csv").write_text(text.replace("file,class", "filename,label"))
    with pytest.raises(DataError, match=r"none of the 160 images train.csv lists is in "
                                        r".*images \(e.g. 'n0153282900000001.jpg'\)"):
        benchmark_sources.miniimagenet(str(tmp_path))


def write_split_folders(root, benchmark, *, validation_name="val", per_class=2):
    for split in SPLITS:
        folder = validation_name if split == "validation" else SHORT[split]
        for i, wnid in enumerate(benchmark.splits[split]):
            os.makedirs(root / folder / wnid)
            for j in range(per_class):
                (root / folder / wnid / f"{wnid}_{j}.JPEG").write_bytes(encoded(i + j))


def test_mini_imagenet_split_folders(tmp_path):
    write_split_folders(tmp_path, MINI, validation_name="validation")
    wnid = MINI.splits["train"][5]
    (tmp_path / "train" / wnid / "notes.txt").write_text("not an image")
    (tmp_path / "train" / wnid / ".DS_Store").write_bytes(b"")
    listing = benchmark_sources.miniimagenet(str(tmp_path))
    assert names(listing) == published(MINI)
    assert listing.splits["train"][5].items == [
        str(tmp_path / "train" / wnid / f"{wnid}_{j}.JPEG") for j in (0, 1)]
    assert (str(tmp_path / "train" / wnid / "notes.txt"),
            "not an image file (by its extension)") in listing.skipped


def test_mini_imagenet_nothing_found_lists_what_was_looked_for(tmp_path):
    with pytest.raises(DataError) as error:
        benchmark_sources.miniimagenet(str(tmp_path))
    message = str(error.value)
    for looked_for in ("mini-imagenet-cache-{train,val,test}.pkl", "train.csv, val.csv and "
                       "test.csv beside an images/ folder", "split folders train/, val/ (or "
                       "validation/) and test/"):
        assert looked_for in message
    with pytest.raises(DataError, match=r"path '.*nowhere' is not a directory"):
        benchmark_sources.miniimagenet(str(tmp_path / "nowhere"))


def test_fingerprints_change_with_the_files(tmp_path):
    write_split_folders(tmp_path, MINI)
    first = benchmark_sources.miniimagenet(str(tmp_path)).fingerprint
    assert benchmark_sources.miniimagenet(str(tmp_path)).fingerprint == first
    wnid = MINI.splits["test"][0]
    (tmp_path / "test" / wnid / "extra.jpg").write_bytes(encoded(99))
    assert benchmark_sources.miniimagenet(str(tmp_path)).fingerprint != first


# ---------------------------------------------------------------------------- tiered-ImageNet

def png_array(value: int) -> np.ndarray:
    """An encoded PNG as the pickles hold it: cv2.imencode's uint8 array of shape [n, 1]."""
    return np.frombuffer(encoded(value, "PNG", 4), np.uint8).reshape(-1, 1)


def write_tiered_pickles(root, *, prefix="", names="words", edit_general=None):
    """{split}_images_png.pkl and {split}_labels.pkl as Ren et al.'s loader writes them.

    Classes are numbered in reverse published order (the loader's order is that of a directory
    listing); label_general numbers the split's categories, label_general_str maps them to their
    names.
    """
    category_of = TIERED.info["class_category"]
    for split in SPLITS:
        classes = list(reversed(TIERED.splits[split]))
        categories = list(TIERED.info["category_splits"][split])
        images, specific, general = [], [], []
        for k, wnid in enumerate(classes):
            for j in range(2):
                images.append(png_array(3 * k + j))
                specific.append(k)
                general.append(categories.index(category_of[wnid]))
        if edit_general:
            edit_general(split, classes, general)
        labels = {
            "label_specific": np.array(specific, np.int32),
            "label_general": np.array(general, np.int32),
            "label_specific_str": [TIERED.info["class_names"][w] if names == "words" else w
                                   for w in classes],
            "label_general_str": {i: TIERED.info["categories"][c]
                                  for i, c in enumerate(categories)}}
        with open(root / f"{prefix}{SHORT[split]}_images_png.pkl", "wb") as f:
            pickle.dump(images, f, protocol=pickle.HIGHEST_PROTOCOL)
        with open(root / f"{prefix}{SHORT[split]}_labels.pkl", "wb") as f:
            pickle.dump(labels, f, protocol=pickle.HIGHEST_PROTOCOL)


@pytest.mark.parametrize("prefix, names_kind", [("", "words"), ("tiered-imagenet-", "wnids")])
def test_tiered_imagenet_pickles(tmp_path, prefix, names_kind):
    write_tiered_pickles(tmp_path, prefix=prefix, names=names_kind)
    listing = benchmark_sources.tieredimagenet(str(tmp_path))
    assert names(listing) == published(TIERED)
    last = listing.splits["train"][-1]  # class 0 of the pickle (reverse order)
    assert last.item_names == [f"{prefix}train_images_png.pkl[0]",
                               f"{prefix}train_images_png.pkl[1]"]
    assert all(callable(item) for item in last.items)  # lazy: nothing decoded while listing
    data = last.items[1]()
    assert isinstance(data, bytes) and data.startswith(b"\x89PNG")
    assert int(np.asarray(Image.open(io.BytesIO(data)))[0, 0, 0]) == 1
    assert benchmark_sources.image_counts(TIERED, listing.splits) == [
        (split, f"{2 * TIERED.counts[split]} images; tiered-ImageNet has "
                f"{TIERED.info['images'][split]} in this split") for split in SPLITS]
    assert listing.skipped == []
    assert "Ren et al. 2018" in listing.origin and "few-shot-ssl-public" in listing.origin


def _one_class_moved(split, classes, general):
    if split == "validation":  # the first class's images get another category's number
        general[0] = general[1] = (general[0] + 1) % 6


def _two_categories_merged(split, classes, general):
    if split == "test":  # category 1's classes numbered as category 0
        general[:] = [0 if g == 1 else g for g in general]


@pytest.mark.parametrize("edit, problem", [
    (_one_class_moved, r"split 'validation' .*: class 'n\d{8}' has label_general \d, other "
                       r"classes of its category 'n\d{8}' have \d"),
    (_two_categories_merged, r"split 'test' .*: categories 'n\d{8}' and 'n\d{8}' share "
                             r"label_general 0"),
])
def test_tiered_imagenet_categories_must_match(tmp_path, edit, problem):
    write_tiered_pickles(tmp_path, edit_general=edit)
    with pytest.raises(DataError, match=r"label_general values of " + problem):
        benchmark_sources.tieredimagenet(str(tmp_path))


def test_tiered_imagenet_unknown_names_and_missing_files(tmp_path):
    write_tiered_pickles(tmp_path)
    with open(tmp_path / "test_labels.pkl", "rb") as f:
        labels = pickle.load(f)
    labels["label_specific_str"][0] = "a class nobody published"
    with open(tmp_path / "test_labels.pkl", "wb") as f:
        pickle.dump(labels, f)
    with pytest.raises(DataError, match=r"test_labels.pkl: 1 class names in label_specific_str "
                                        r"are neither tiered-ImageNet wnids nor their WordNet "
                                        r"names, e.g. \['a class nobody published'\]"):
        benchmark_sources.tieredimagenet(str(tmp_path))
    del labels["label_general"]
    with open(tmp_path / "test_labels.pkl", "wb") as f:
        pickle.dump(labels, f)
    with pytest.raises(DataError, match=r"not tiered-ImageNet's label pickle: expected the keys"):
        benchmark_sources.tieredimagenet(str(tmp_path))
    os.remove(tmp_path / "test_labels.pkl")
    with pytest.raises(DataError, match=r"has part of tiered-ImageNet's pickles; missing: "
                                        r"\['test_labels.pkl'\]"):
        benchmark_sources.tieredimagenet(str(tmp_path))


def test_tiered_imagenet_split_folders_and_a_wrong_split(tmp_path):
    write_split_folders(tmp_path, TIERED)
    listing = benchmark_sources.tieredimagenet(str(tmp_path))
    assert names(listing) == published(TIERED)
    moved = TIERED.splits["test"][0]
    os.rename(tmp_path / "test" / moved, tmp_path / "val" / moved)
    with pytest.raises(DataError, match=rf"split 'validation' has 98 classes, expected 97; 1 not "
                                        rf"of this split, e.g. '{moved}' \(a test class\)"):
        benchmark_sources.tieredimagenet(str(tmp_path))


def test_tiered_imagenet_nothing_found(tmp_path):
    with pytest.raises(DataError, match=r"no tiered-ImageNet found in .*\{train,val,test\}"
                                        r"_images_png.pkl"):
        benchmark_sources.tieredimagenet(str(tmp_path))


# ------------------------------------------------------------------- CIFAR-FS, FC100 (TFDS)

FINE = sorted(benchmark_splits.load("cifarfs").split_of())  # CIFAR-100's label order
COARSE = sorted(FC100.info["superclasses"])
COARSE_OF = {f: c for c, fs in FC100.info["superclasses"].items() for f in fs}


class FakeCifar100(cifar.Cifar100, skip_registration=True):
    """TFDS cifar100 with 3 images per class (2 train, 1 test) and the real label names."""

    name = "cifar100"
    leave_out: tuple[str, ...] = ()

    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls):
        return None

    def _split_generators(self, dl_manager):
        self.info.features["label"].names = FINE
        self.info.features["coarse_label"].names = COARSE
        return {"train": self._generate_examples("train", 2),
                "test": self._generate_examples("test", 1)}

    def _generate_examples(self, split, count):
        for label, fine in enumerate(FINE):
            if fine in self.leave_out:
                continue
            for i in range(count):
                yield f"{split}_{label}_{i}", {
                    "id": f"{split}_{label:03d}{i}",
                    "image": np.full((32, 32, 3), label, np.uint8),
                    "label": label, "coarse_label": COARSE.index(COARSE_OF[fine])}


class FakeCaltechBirds2011(caltech_birds.CaltechBirds2011, skip_registration=True):
    """TFDS caltech_birds2011 with 2 images per class (one per split), labels without names."""

    name = "caltech_birds2011"

    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls):
        return None

    def _split_generators(self, dl_manager):
        return [tfds.core.SplitGenerator(name="train", gen_kwargs={"part": 0}),
                tfds.core.SplitGenerator(name="test", gen_kwargs={"part": 1})]

    def _generate_examples(self, part):
        for label, folder in enumerate(sorted(CUB.split_of())):
            filename = f"{folder}/{folder.split('.', 1)[1]}_{part}.jpg"
            yield filename, {
                "image": io.BytesIO(encoded(label)), "image/filename": filename,
                "label": label, "label_name": folder.split(".", 1)[1].lower(),
                "bbox": tfds.features.BBox(ymin=0.1, xmin=0.1, ymax=0.9, xmax=0.9),
                "segmentation_mask": np.zeros((8, 8, 1), np.uint8)}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A TFDS data dir with the fake cifar100 and caltech_birds2011 prepared."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    FakeCifar100(data_dir=data_dir).download_and_prepare()
    FakeCaltechBirds2011(data_dir=data_dir).download_and_prepare()
    return data_dir


def test_cifar_fs_from_tfds(tfds_dir):
    listing = benchmark_sources.cifarfs(tfds_dir)
    assert names(listing) == published(benchmark_splits.load("cifarfs"))
    whale = listing.splits["test"][0]
    assert whale.name == "whale" and len(whale.items) == 3
    assert int(np.asarray(Image.open(io.BytesIO(whale.items[0])))[0, 0, 0]) == FINE.index("whale")
    assert ("whale", "3 images; CIFAR-FS has 600 per class") in benchmark_sources.image_counts(
        benchmark_splits.load("cifarfs"), listing.splits)
    assert listing.skipped == []
    assert "Bertinetto et al. 2019" in listing.origin and "TFDS cifar100/3.0.2" in listing.origin


def test_fc100_from_tfds(tfds_dir):
    listing = benchmark_sources.fc100(tfds_dir)
    assert names(listing) == published(FC100)
    assert [len(listing.splits[s]) for s in SPLITS] == [60, 20, 20]
    assert {COARSE_OF[c.name] for c in listing.splits["test"]} == {
        "aquatic_mammals", "insects", "medium_mammals", "people"}
    assert "Oreshkin et al. 2018" in listing.origin


def test_cifar_without_a_class_names_the_split(tmp_path):
    class WithoutWhale(FakeCifar100, skip_registration=True):
        name = "cifar100"
        leave_out = ("whale",)

    WithoutWhale(data_dir=str(tmp_path)).download_and_prepare()
    with pytest.raises(DataError, match=r"TFDS cifar100/3.0.2 .* lacks classes of the FC100 class "
                                        r"split .*split 'test': 1 of its 20 classes are missing, "
                                        r"e.g. \['whale'\]"):
        benchmark_sources.fc100(str(tmp_path))


def test_cub_from_tfds_names_classes_by_folder(tfds_dir):
    listing = benchmark_sources.cub(data_dir=tfds_dir)
    assert names(listing) == published(CUB)
    albatross = listing.splits["train"][0]
    assert albatross.name == "001.Black_footed_Albatross" and len(albatross.items) == 2
    assert albatross.items[0].startswith(b"\xff\xd8")  # the JPEG bytes, not decoded
    laysan = listing.splits["validation"][0]
    assert int(np.asarray(Image.open(io.BytesIO(laysan.items[0])))[0, 0, 0]) in (0, 1, 2)
    assert benchmark_sources.image_counts(CUB, listing.splits) == [
        ("cub", "400 images; CUB-200-2011 has 11788")]
    assert "Chen et al. 2019" in listing.origin


# ---------------------------------------------------------------------------------- CUB

def write_cub(root, *, leave_out=()):
    images = root / "CUB_200_2011" / "images"
    for i, folder in enumerate(sorted(CUB.split_of())):
        if folder in leave_out:
            continue
        os.makedirs(images / folder)
        for j in range(2):
            name = f"{folder.split('.', 1)[1]}_{j:04d}_{i}.jpg"
            (images / folder / name).write_bytes(encoded(i))
    (root / "CUB_200_2011" / "README").write_text("CUB-200-2011")
    return root / "CUB_200_2011"


@pytest.mark.parametrize("where", ["parent", "CUB_200_2011", "images"])
def test_cub_folders(tmp_path, where):
    cub_dir = write_cub(tmp_path)
    path = {"parent": tmp_path, "CUB_200_2011": cub_dir, "images": cub_dir / "images"}[where]
    listing = benchmark_sources.cub(str(path))
    assert names(listing) == published(CUB)
    first = listing.splits["test"][0]
    assert first.name == "004.Groove_billed_Ani"
    assert first.items == [str(cub_dir / "images" / first.name / f"Groove_billed_Ani_{j:04d}_3.jpg")
                           for j in (0, 1)]


def test_cub_missing_folders_and_nothing_found(tmp_path):
    write_cub(tmp_path, leave_out=("002.Laysan_Albatross",))
    with pytest.raises(DataError, match=r"split 'validation': 1 of its 50 classes are missing, "
                                        r"e.g. \['002.Laysan_Albatross'\]"):
        benchmark_sources.cub(str(tmp_path))
    with pytest.raises(DataError, match=r"no CUB-200-2011 class folders found in .*"
                                        r"001.Black_footed_Albatross"):
        benchmark_sources.cub(str(tmp_path / "CUB_200_2011" / "README"))


# --------------------------------------------------------------------------- the dispatcher

def test_listing_dispatches_by_name(tmp_path, tfds_dir):
    write_split_folders(tmp_path, MINI)
    assert names(benchmark_sources.listing("miniimagenet", str(tmp_path), None)) == \
        published(MINI)
    assert names(benchmark_sources.listing("cub", None, tfds_dir)) == published(CUB)
    with pytest.raises(DataError, match=r"unknown benchmark 'mini-imagenet'; allowed: "
                                        r"\['miniimagenet', 'tieredimagenet', 'cifarfs', 'fc100', "
                                        r"'cub'\]"):
        benchmark_sources.listing("mini-imagenet", str(tmp_path), None)
    with pytest.raises(DataError, match=r"'tieredimagenet' needs the path of its files"):
        benchmark_sources.listing("tieredimagenet", None, tfds_dir)
    with pytest.raises(DataError, match=r"'cifarfs' reads TFDS cifar100 .* takes no path"):
        benchmark_sources.listing("cifarfs", str(tmp_path), tfds_dir)


def test_a_benchmark_short_of_images_is_refused_unless_allowed_then_marked(tmp_path):
    from tfmeta.run import config as config_lib
    from tfmeta.run import tasks

    counts = {split: {name: 600 for name in MINI.splits[split]} for split in SPLITS}
    assert benchmark_sources.check_complete("miniimagenet", counts, where="x",
                                            allow_partial=False) == ""
    counts["test"][MINI.splits["test"][0]] = 412
    with pytest.raises(DataError, match=rf"x is not the whole mini-ImageNet benchmark: 1 image "
                                        rf"counts differ from the published ones \("
                                        rf"{MINI.splits['test'][0]}: 412 images; mini-ImageNet "
                                        rf"has 600 per class\); repair the data .* set "
                                        rf"data.allow_partial_benchmark=True"):
        benchmark_sources.check_complete("miniimagenet", counts, where="x", allow_partial=False)

    write_mini_caches(tmp_path)  # 2 images per class, not 600
    c = config_lib.base_config()
    c.task, c.data.source = "images", f"miniimagenet:{tmp_path}"
    c.data.image_size, c.data.channels, c.data.rotate = 8, 3, False
    c.data.ways, c.data.shots, c.data.queries = 2, 1, 1
    c.data.prepared_dir = str(tmp_path / "prepared")
    config_lib.validate(c)
    with pytest.raises(DataError, match="is not the whole mini-ImageNet benchmark: 100 image "
                                        "counts differ"):
        tasks.build(c).split_classes()
    c.data.allow_partial_benchmark = True
    source = tasks.build(c)
    assert source.split_classes()["test"] == 20
    assert source.result_note().startswith("not mini-ImageNet: 100 image counts differ")
    assert source.data_summary()["not_the_benchmark"] == source.result_note()
    assert tasks.build(config_lib.base_config()).result_note is None  # Omniglot: nothing to say


def test_the_results_table_marks_a_result_that_is_not_the_benchmark():
    from tfmeta.run import reporting

    result = {"metric": "accuracy", "accuracy": 0.5, "ci95": 0.01,
              "not_the_benchmark": "not CIFAR-FS: 13 image counts differ"}
    assert reporting._format_result(result) == "50.00 ± 1.00 % (not CIFAR-FS: 13 image counts " \
                                               "differ)"


def test_a_mini_imagenet_cache_with_four_channels_is_refused(tmp_path):
    write_mini_caches(tmp_path)
    with open(tmp_path / "mini-imagenet-cache-val.pkl", "rb") as f:
        data = pickle.load(f)
    data["image_data"] = np.concatenate(
        [data["image_data"], np.full(data["image_data"].shape[:3] + (1,), 7, np.uint8)], axis=3)
    with open(tmp_path / "mini-imagenet-cache-val.pkl", "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(DataError, match=r"mini-imagenet-cache-val.pkl: 'image_data' is uint8 "
                                        r"\[32, 84, 84, 4\], 4 channels; mini-ImageNet's caches "
                                        r"hold RGB images .* convert the cache to RGB"):
        benchmark_sources.miniimagenet(str(tmp_path))


def test_benchmark_class_folders_are_read_as_folder_sources_read_them(tmp_path):
    """Subfolders and links are read, hidden entries recorded, linked duplicates refused."""
    from tfmeta.data import class_listing

    write_split_folders(tmp_path, MINI)
    wnid, other = MINI.splits["train"][5], MINI.splits["train"][6]
    (tmp_path / "train" / wnid / ".DS_Store").write_bytes(b"")
    os.makedirs(tmp_path / "extra")
    (tmp_path / "extra" / "more.JPEG").write_bytes(encoded(9))
    os.symlink(tmp_path / "extra", tmp_path / "train" / wnid / "sub")
    listing = benchmark_sources.miniimagenet(str(tmp_path))
    assert listing.splits["train"][5].items[-1] == str(tmp_path / "train" / wnid / "sub" /
                                                       "more.JPEG")
    assert (str(tmp_path / "train" / wnid / ".DS_Store"), class_listing.HIDDEN_FILE) \
        in listing.skipped
    os.symlink(tmp_path / "extra", tmp_path / "train" / other / "sub")
    with pytest.raises(DataError, match="are the same file .* an image must belong to one class"):
        benchmark_sources.miniimagenet(str(tmp_path))


def test_training_on_a_partial_benchmark_exits_2_with_one_line_writing_nothing(tmp_path):
    import subprocess
    import sys

    from tests.helpers import REPO, subprocess_env

    write_mini_caches(tmp_path)
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "tfmeta.train",
         f"--config={REPO}/configs/miniimagenet_maml.py:smoke",
         f"--config.data.source=miniimagenet:{tmp_path}", f"--workdir={workdir}",
         f"--config.data.prepared_dir={tmp_path / 'prepared'}"],
        capture_output=True, text=True, timeout=600, env=subprocess_env(), cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "is not the whole mini-ImageNet benchmark: 100 image counts differ" in errors[0]
    assert "data.allow_partial_benchmark=True" in errors[0]
    assert not workdir.exists() or not os.listdir(workdir)  # nothing written in it
