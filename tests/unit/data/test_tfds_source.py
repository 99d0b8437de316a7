"""tfmeta.data.tfds_source on small TFDS datasets generated offline in tmp_path."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from tfmeta.data import class_listing, tfds_source
from tfmeta.data.class_listing import DataError

from tests.helpers import REPO

BIRDS = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani",
         "Crested_Auklet", "Least_Auklet", "Parakeet_Auklet", "Rhinoceros_Auklet",
         "Brewer_Blackbird", "Red_winged_Blackbird"]
DOWNLOAD_URL = "https://example.org/files/tiny_birds.zip"


def png(value: int, size: int = 6) -> bytes:
    """A small RGB PNG whose pixels all equal ``value`` (so each image is recognisable)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _examples(split: str):
    # Class c has c % 3 + 1 images in 'train' and one in 'test'; the last class has none.
    for c, _ in enumerate(BIRDS[:-1]):
        count = c % 3 + 1 if split == "train" else 1
        for i in range(count):
            value = 10 * c + i + (5 if split == "test" else 0)
            yield f"{split}-{c}-{i}", {"image": png(value), "label": c}


class TfmetaTestBirds(tfds.core.GeneratorBasedBuilder):
    """Ten bird classes, PNG images, a train and a test split; nothing to download."""

    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls):
        return None

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=BIRDS)}),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {"train": _examples("train"), "test": _examples("test")}

    def _generate_examples(self):  # the generators above are used instead
        raise NotImplementedError


class TfmetaTestTwoLabels(tfds.core.GeneratorBasedBuilder):
    """Two ClassLabels and two Images, no supervised keys."""

    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls):
        return None

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "photo": tfds.features.Image(shape=(None, None, 3)),
            "mask": tfds.features.Image(shape=(None, None, 1)),
            "species": tfds.features.ClassLabel(names=["a", "b"]),
            "family": tfds.features.ClassLabel(names=["x", "y"])}))

    def _split_generators(self, dl_manager):
        def generate():
            for i in range(4):
                yield i, {"photo": png(i), "mask": np.zeros((4, 4, 1), np.uint8),
                          "species": i % 2, "family": i // 2}
        return {"train": generate()}

    def _generate_examples(self):
        raise NotImplementedError


class TfmetaTestNoLabel(tfds.core.GeneratorBasedBuilder):
    """An image dataset without a ClassLabel."""

    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls):
        return None

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)), "caption": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": iter([(0, {"image": png(1), "caption": "a bird"})])}

    def _generate_examples(self):
        raise NotImplementedError


def _zip_bytes() -> bytes:
    """The 'downloaded' archive: BIRDS[:3] as class folders of PNGs (fixed dates: stable hash)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for c, name in enumerate(BIRDS[:3]):
            for i in range(2):
                info = zipfile.ZipInfo(f"tiny_birds/{name}/{i}.png",
                                       date_time=(2020, 1, 1, 0, 0, 0))
                archive.writestr(info, png(40 * c + i))
    return buffer.getvalue()


ZIP = _zip_bytes()


class TfmetaTestDownload(tfds.core.GeneratorBasedBuilder):
    """A dataset that downloads one registered file (tiny_birds.zip)."""

    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls):
        return {DOWNLOAD_URL: tfds.core.download.checksums.UrlInfo(
            size=len(ZIP), checksum=hashlib.sha256(ZIP).hexdigest(), filename="tiny_birds.zip")}

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=BIRDS[:3])}),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        path = dl_manager.download(DOWNLOAD_URL)
        return {"train": self._generate_examples(os.fspath(path))}

    def _generate_examples(self, path):
        with zipfile.ZipFile(path) as archive:
            for name in sorted(archive.namelist()):
                yield name, {"image": archive.read(name), "label": name.split("/")[1]}


@pytest.fixture
def offline(monkeypatch):
    """Every HTTP request fails as it does without network (name resolution)."""
    import requests

    def refuse(self, url, *args, **kwargs):
        raise requests.exceptions.ConnectionError(
            f"Max retries exceeded with url: {url} (Caused by NameResolutionError)")

    monkeypatch.setattr(requests.sessions.Session, "get", refuse)


def test_read_groups_encoded_images_by_class_name(tmp_path):
    found = tfds_source.read("tfmeta_test_birds", data_dir=str(tmp_path))
    assert found.full_name == "tfmeta_test_birds/1.0.0"
    assert (found.image_key, found.label_key) == ("image", "label")
    assert [c.name for c in found.classes] == BIRDS[:-1]
    assert found.empty == [BIRDS[-1]]
    assert found.split_sizes == {"test": 9, "train": sum(c % 3 + 1 for c in range(9))}
    crested = found.classes[4]
    assert len(crested.items) == 3  # 4 % 3 + 1 = 2 train images, 1 test image
    for item, name in zip(crested.items, crested.item_names):
        assert isinstance(item, bytes) and item.startswith(b"\x89PNG")  # encoded, not decoded
        assert name.startswith("tfmeta_test_birds/1.0.0/")
    pixels = sorted(int(np.asarray(Image.open(io.BytesIO(i)))[0, 0, 0]) for i in crested.items)
    assert pixels == [40, 41, 45]  # class 4's train images 40, 41 and its test image 45


def test_listing_by_fractions_is_reproducible_and_uses_every_class(tmp_path):
    first = tfds_source.listing("tfmeta_test_birds", data_dir=str(tmp_path), split_seed=3,
                                fractions=(0.5, 0.25, 0.25))
    again = tfds_source.listing("tfmeta_test_birds", data_dir=str(tmp_path), split_seed=3,
                                fractions=(0.5, 0.25, 0.25))
    expected = class_listing.split_by_fractions(BIRDS[:-1], (0.5, 0.25, 0.25), 3)
    assert {s: [c.name for c in cs] for s, cs in first.splits.items()} == expected
    assert first.fingerprint == again.fingerprint
    other = tfds_source.listing("tfmeta_test_birds", data_dir=str(tmp_path), split_seed=4,
                                fractions=(0.5, 0.25, 0.25))
    assert other.fingerprint != first.fingerprint  # another class split, another listing
    assert "seed 3" in first.origin and "tfmeta_test_birds/1.0.0" in first.origin
    assert first.skipped == [(BIRDS[-1], "class without examples in the dataset")]


def test_listing_by_class_lists(tmp_path):
    lists = {"train": BIRDS[:4], "validation": BIRDS[4:6], "test": BIRDS[6:8]}
    result = tfds_source.listing("tfmeta_test_birds", data_dir=str(tmp_path), class_splits=lists)
    assert {s: [c.name for c in cs] for s, cs in result.splits.items()} == lists
    assert (BIRDS[8], "class in none of the class lists") in result.skipped
    with pytest.raises(DataError, match=r"1 listed classes .* e.g. \['Red_winged_Blackbird'\]"):
        tfds_source.listing("tfmeta_test_birds", data_dir=str(tmp_path),
                            class_splits={"train": BIRDS[:2], "test": [BIRDS[9]]})


def test_features_are_found_or_named(tmp_path):
    with pytest.raises(DataError) as error:
        tfds_source.read("tfmeta_test_two_labels", data_dir=str(tmp_path))
    message = str(error.value)
    assert "several image features ['photo', 'mask']" in message and "image_key" in message
    with pytest.raises(DataError, match=r"several class label features "
                                        r"\['species', 'family'\].*label_key"):
        tfds_source.read("tfmeta_test_two_labels", data_dir=str(tmp_path), image_key="photo")
    found = tfds_source.read("tfmeta_test_two_labels", data_dir=str(tmp_path),
                             image_key="photo", label_key="family")
    assert [(c.name, len(c.items)) for c in found.classes] == [("x", 2), ("y", 2)]
    with pytest.raises(DataError, match=r"label_key='caption' is not one of"):
        tfds_source.read("tfmeta_test_no_label", data_dir=str(tmp_path), label_key="caption")
    with pytest.raises(DataError, match=r"has no class label feature \(a top-level "
                                        r"tfds.features.ClassLabel\)"):
        tfds_source.read("tfmeta_test_no_label", data_dir=str(tmp_path))


def test_fingerprint_identifies_the_dataset(tmp_path):
    birds = tfds_source.read("tfmeta_test_birds", data_dir=str(tmp_path / "a"))
    again = tfds_source.read("tfmeta_test_birds", data_dir=str(tmp_path / "b"))
    species = tfds_source.read("tfmeta_test_two_labels", data_dir=str(tmp_path),
                               image_key="photo", label_key="species")
    family = tfds_source.read("tfmeta_test_two_labels", data_dir=str(tmp_path),
                              image_key="photo", label_key="family")
    assert birds.fingerprint == again.fingerprint  # same dataset in another data dir
    assert len({birds.fingerprint, species.fingerprint, family.fingerprint}) == 3
    # The cheap fingerprint (no example read) is the same digest.
    assert tfds_source.fingerprint("tfmeta_test_birds", data_dir=str(tmp_path / "a")) == \
        birds.fingerprint
    assert tfds_source.fingerprint("tfmeta_test_two_labels", data_dir=str(tmp_path),
                                   image_key="photo", label_key="family") == family.fingerprint


def test_fingerprint_prepares_offline(tmp_path, offline):
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "tiny_birds.zip").write_bytes(ZIP)
    first = tfds_source.fingerprint("tfmeta_test_download", data_dir=str(tmp_path))
    assert (tmp_path / "tfmeta_test_download" / "1.0.0" / "dataset_info.json").exists()
    assert tfds_source.read("tfmeta_test_download", data_dir=str(tmp_path)).fingerprint == first


class FewerBirds(TfmetaTestBirds, skip_registration=True):
    """tfmeta_test_birds 1.0.0 as prepared from other data: no test split."""

    name = "tfmeta_test_birds"

    def _split_generators(self, dl_manager):
        return {"train": _examples("train")}


def test_fingerprint_changes_with_the_split_sizes(tmp_path):
    FewerBirds(data_dir=str(tmp_path / "fewer")).download_and_prepare()
    fewer = tfds_source.fingerprint("tfmeta_test_birds", data_dir=str(tmp_path / "fewer"))
    full = tfds_source.fingerprint("tfmeta_test_birds", data_dir=str(tmp_path / "full"))
    assert tfds_source.read("tfmeta_test_birds", data_dir=str(tmp_path / "fewer")).split_sizes \
        == {"train": 18}
    assert fewer != full


def test_unknown_datasets_and_bad_specs(tmp_path):
    with pytest.raises(DataError, match=r"TFDS dataset 'tfmeta_no_such_set'"):
        tfds_source.read("tfmeta_no_such_set", data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"not of the form NAME\[/CONFIG\]"):
        tfds_source.read("Birds With Spaces", data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"unknown split names \['val'\]"):
        tfds_source.listing("tfmeta_test_birds", data_dir=str(tmp_path),
                            class_splits={"train": BIRDS[:2], "val": BIRDS[2:4]})


def test_failed_download_says_where_to_put_the_file(tmp_path, offline):
    with pytest.raises(DataError) as error:
        tfds_source.read("tfmeta_test_download", data_dir=str(tmp_path))
    message = str(error.value)
    manual = os.path.join(str(tmp_path), "downloads", "manual")
    assert "\n" not in message
    assert "cannot be downloaded (ConnectionError" in message
    assert f"put tiny_birds.zip (from {DOWNLOAD_URL}) in {manual}" in message


def test_the_manual_directory_is_used_offline(tmp_path, offline):
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "tiny_birds.zip").write_bytes(ZIP)
    listing = tfds_source.listing("tfmeta_test_download", data_dir=str(tmp_path),
                                  class_splits={"train": BIRDS[:2], "test": [BIRDS[2]]})
    assert [(c.name, len(c.items)) for c in listing.splits["train"]] == [(BIRDS[0], 2),
                                                                          (BIRDS[1], 2)]


def test_a_wrong_file_in_the_manual_directory_is_named(tmp_path, offline):
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "tiny_birds.zip").write_bytes(ZIP[:-10])
    with pytest.raises(DataError, match=r"is not the expected one.*fresh copy"):
        tfds_source.read("tfmeta_test_download", data_dir=str(tmp_path))


def test_registered_files_of_tfds_own_datasets():
    files = tfds_source.registered_files(tfds.builder("cifar100"))
    assert files == {"cifar-100-binary.tar.gz":
                     "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"}
    birds = tfds_source.registered_files(tfds.builder("caltech_birds2011"))
    assert set(birds) == {"CUB_200_2011.tgz", "segmentations.tgz"}


def test_cifar100_offline_names_its_archive_and_the_manual_directory(tmp_path, offline):
    try:
        import importlib_resources  # noqa: F401  (TFDS 4.9 needs it to prepare its datasets)
    except ImportError:
        with pytest.raises(DataError, match=r"cifar100/3.0.2 cannot be prepared.*pip install "
                                            r"importlib_resources"):
            tfds_source.read("cifar100", data_dir=str(tmp_path))
        return
    with pytest.raises(DataError) as error:
        tfds_source.read("cifar100", data_dir=str(tmp_path))
    manual = os.path.join(str(tmp_path), "downloads", "manual")
    assert (f"put cifar-100-binary.tar.gz (from https://www.cs.toronto.edu/~kriz/"
            f"cifar-100-binary.tar.gz) in {manual}") in str(error.value)


def test_offline_and_not_prepared_fails_before_tfds_downloads(tmp_path, monkeypatch):
    import time

    import requests

    def unreachable(self, method, url, *args, **kwargs):
        raise requests.exceptions.ConnectionError(f"{method} {url}: NameResolutionError")

    def download(*args, **kwargs):
        raise AssertionError("TFDS was left to download (and retry for minutes)")

    monkeypatch.setattr(requests.sessions.Session, "request", unreachable)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
    start = time.monotonic()
    with pytest.raises(DataError) as error:
        tfds_source.read("tfmeta_test_download", data_dir=str(tmp_path))
    assert time.monotonic() - start < 10
    manual = os.path.join(str(tmp_path), "downloads", "manual")
    assert "cannot be downloaded (ConnectionError" in str(error.value)
    assert f"put tiny_birds.zip (from {DOWNLOAD_URL}) in {manual}" in str(error.value)
    # With the file in the manual directory, nothing is requested and TFDS prepares it.
    os.makedirs(manual)
    with open(os.path.join(manual, "tiny_birds.zip"), "wb") as f:
        f.write(ZIP)
    monkeypatch.undo()
    monkeypatch.setattr(requests.sessions.Session, "request", unreachable)
    assert tfds_source.read("tfmeta_test_download", data_dir=str(tmp_path)).classes


def test_the_cifar_fs_config_names_the_archive_tfds_reads():
    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar100", data_dir=None)
    files = sorted(tfds_source.registered_files(builder))
    with open(os.path.join(REPO, "configs", "cifarfs_maml.py")) as f:
        text = f.read()
    assert files == ["cifar-100-binary.tar.gz"]
    assert "``cifar-100-binary.tar.gz``" in text and "cifar-100-python.tar.gz" not in text
