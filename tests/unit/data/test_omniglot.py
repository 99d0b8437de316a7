"""Omniglot: archive verification, preparation, preprocessing and class splits."""

from __future__ import annotations

import io
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from tfmeta.data import omniglot, omniglot_builder

SMALL = ("images_background_small1.zip", "images_background_small2.zip")


def _prepared_dir(data_dir, subset: str = "small") -> str:
    return os.path.join(data_dir, "tfmeta_omniglot", f"{subset}_28", "1.0.0")


@pytest.fixture
def no_archive_env(monkeypatch):
    monkeypatch.delenv(omniglot.ARCHIVES_ENV, raising=False)


# --- Checksums -------------------------------------------------------------------------------

def test_canonical_checksums_are_tfds_registered_ones():
    checksums = omniglot_builder.canonical_checksums()
    assert set(checksums) == set(omniglot_builder.ARCHIVES[n].filename
                                 for n in omniglot_builder.ARCHIVES)
    assert checksums["images_background.zip"] == (
        9464212, "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640")


@pytest.mark.parametrize("filename", SMALL)
def test_original_small_archives_pass_tfds_checksums(omniglot_archives_dir, filename):
    name = filename[:-4]
    assert omniglot.verify_archive(os.path.join(omniglot_archives_dir, filename), name) == "tfds"


@pytest.mark.parametrize("filename", ["images_background.zip", "images_evaluation.zip"])
def test_repacked_full_archives_pass_pinned_checksums(omniglot_archives_dir, filename):
    name = filename[:-4]
    assert omniglot.verify_archive(os.path.join(omniglot_archives_dir, filename), name) == "repack"


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _corrupt_byte(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _wrong_file(path):
    shutil.copyfile(path.replace("small1", "small2"), path)


@pytest.mark.parametrize("damage", [_truncate, _corrupt_byte, _wrong_file])
def test_bad_archive_is_rejected_and_nothing_is_prepared(
        omniglot_archives_dir, tmp_path, no_archive_env, damage):
    archives = tmp_path / "archives"
    archives.mkdir()
    for f in SMALL:
        shutil.copyfile(os.path.join(omniglot_archives_dir, f), archives / f)
    bad = str(archives / SMALL[0])
    damage(bad)
    with pytest.raises(omniglot.OmniglotIntegrityError) as error:
        omniglot.load(data_dir=tmp_path / "tfds", archives_dir=archives, subset="small")
    message = str(error.value)
    assert bad in message
    assert "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4" in message
    assert "1319022 bytes" in message
    assert not os.path.exists(_prepared_dir(tmp_path / "tfds"))


def test_structural_check_catches_corruption_without_checksum(omniglot_archives_dir, tmp_path):
    # Defence in depth: read_archive alone (no checksum) rejects damaged data.
    bad = str(tmp_path / SMALL[0])
    shutil.copyfile(os.path.join(omniglot_archives_dir, SMALL[0]), bad)
    _corrupt_byte(bad)
    with pytest.raises(omniglot.OmniglotIntegrityError, match="malformed"):
        omniglot_builder.read_archive(bad, "images_background_small1", 28)


def test_structural_check_rejects_wrong_counts(tmp_path):
    path = tmp_path / "images_background_small1.zip"
    png = io.BytesIO()
    Image.new("1", (105, 105), 1).save(png, format="PNG")
    with zipfile.ZipFile(path, "w") as z:
        for d in range(20):
            z.writestr(f"images_background_small1/Latin/character01/0001_{d + 1:02d}.png",
                       png.getvalue())
    with pytest.raises(omniglot.OmniglotIntegrityError,
                       match=r"found 1 alphabets and 1 characters.*5 alphabets, 136 characters"):
        omniglot_builder.read_archive(str(path), "images_background_small1", 28)


def test_missing_archive_in_explicit_dir_names_it(tmp_path, no_archive_env):
    with pytest.raises(FileNotFoundError, match="images_background_small2.zip"):
        omniglot.load(data_dir=tmp_path / "tfds", archives_dir=tmp_path, subset="small")


def test_env_var_is_used_when_no_argument(tmp_path, monkeypatch):
    empty = tmp_path / "from_env"
    empty.mkdir()
    monkeypatch.setenv(omniglot.ARCHIVES_ENV, str(empty))
    assert omniglot.archives_dir_from_env() == str(empty)
    with pytest.raises(FileNotFoundError, match=str(empty)):
        omniglot.load(data_dir=tmp_path / "tfds", subset="small")


# --- Preparation and loading -----------------------------------------------------------------

def test_manual_dir_then_reuse_without_archives(omniglot_archives_dir, tmp_path, no_archive_env):
    data_dir = tmp_path / "tfds"
    manual = data_dir / "downloads" / "manual"
    manual.mkdir(parents=True)
    for f in SMALL:
        shutil.copyfile(os.path.join(omniglot_archives_dir, f), manual / f)
    first = omniglot.load(data_dir=data_dir, subset="small")
    assert os.path.isdir(_prepared_dir(data_dir))
    # Later loads read the prepared dataset; the archives are not needed.
    shutil.rmtree(manual)
    again = omniglot.load(data_dir=data_dir, subset="small",
                          archives_dir=tmp_path / "does-not-exist")
    np.testing.assert_array_equal(first.images, again.images)
    assert first.characters == again.characters


def test_small_subset_layout(omniglot_small):
    data = omniglot_small
    assert data.images.shape == (242, 20, 28, 28) and data.images.dtype == np.uint8
    assert len(data.characters) == len(data.alphabets) == len(data.archives) == 242
    assert data.background.dtype == np.bool_ and data.background.all()
    # Greek and Latin are in both small archives; kept once, under small1.
    assert len(set(data.characters)) == 242
    assert data.archives.count("images_background_small1") == 136
    assert data.archives.count("images_background_small2") == 106
    assert data.characters[0] == "Balinese/character01"
    assert all(c.startswith(a + "/") for a, c in zip(data.alphabets, data.characters))
    small1 = [c for c, a in zip(data.characters, data.archives) if a.endswith("small1")]
    assert small1 == sorted(small1)


def test_preprocessing_matches_maml_polarity_and_lanczos(omniglot_small, omniglot_archives_dir):
    with zipfile.ZipFile(os.path.join(omniglot_archives_dir, SMALL[0])) as z:
        first = sorted(n for n in z.namelist()
                       if n.startswith("images_background_small1/Balinese/character01/")
                       and n.endswith(".png"))[0]
        with Image.open(io.BytesIO(z.read(first))) as image:
            raw = np.asarray(image.convert("L"))
            expected = 255 - np.asarray(
                image.convert("L").resize((28, 28), resample=Image.LANCZOS))
    np.testing.assert_array_equal(omniglot_small.images[0, 0], expected)
    # PNG: white background (255), dark strokes. Stored: background 0, strokes bright.
    assert np.mean(raw == 255) > 0.8
    image = omniglot_small.images[0, 0]
    assert image[0, 0] == 0 and np.mean(image == 0) > 0.5 and image.max() > 200


def test_full_dataset(omniglot_full):
    data = omniglot_full
    assert data.images.shape == (1623, 20, 28, 28) and data.images.dtype == np.uint8
    assert int(data.background.sum()) == 964
    assert len(set(data.alphabets)) == 50 and len(set(data.characters)) == 1623
    assert data.background[:964].all() and not data.background[964:].any()
    assert data.images.nbytes == 1623 * 20 * 28 * 28


# --- Splits ----------------------------------------------------------------------------------

def _check_partition(data, scheme, seed=omniglot.DEFAULT_SPLIT_SEED):
    parts = {s: omniglot.split_indices(data, scheme, s, seed) for s in omniglot.SPLITS}
    chars = {s: {data.characters[i] for i in idx} for s, idx in parts.items()}
    assert not chars["train"] & chars["validation"]
    assert not chars["train"] & chars["test"]
    assert not chars["validation"] & chars["test"]
    assert sum(len(p) for p in parts.values()) == data.num_characters
    return parts


def test_maml_split_full(omniglot_full):
    parts = _check_partition(omniglot_full, "maml")
    assert [len(parts[s]) for s in omniglot.SPLITS] == [1100, 100, 423]
    images = omniglot.split(omniglot_full, "maml", "validation")
    assert images.shape == (100, 20, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[0], omniglot_full.images[parts["validation"][0]])
    other = omniglot.split_indices(omniglot_full, "maml", "train", seed=2)
    assert not np.array_equal(other, parts["train"])


def test_lake_split_full(omniglot_full):
    data = omniglot_full
    parts = _check_partition(data, "lake")
    assert not data.background[parts["test"]].any() and len(parts["test"]) == 659
    assert data.background[parts["train"]].all() and data.background[parts["validation"]].all()
    train_alphabets = {data.alphabets[i] for i in parts["train"]}
    val_alphabets = {data.alphabets[i] for i in parts["validation"]}
    assert len(val_alphabets) == 3 and not train_alphabets & val_alphabets
    assert len(train_alphabets) == 27


@pytest.mark.parametrize("scheme", omniglot.SPLIT_SCHEMES)
def test_small_subset_splits(omniglot_small, scheme):
    parts = _check_partition(omniglot_small, scheme)
    # The reptile scheme has no validation split, as in openai/supervised-reptile.
    assert all(len(p) > 0 for s, p in parts.items() if (scheme, s) != ("reptile", "validation"))
    if scheme == "maml":
        assert [len(parts[s]) for s in omniglot.SPLITS] == [164, 15, 63]
    if scheme == "reptile":
        assert [len(parts[s]) for s in omniglot.SPLITS] == [179, 0, 63]


def test_unknown_scheme_or_split_is_rejected(omniglot_small):
    with pytest.raises(ValueError, match=r"'mini'.*\('maml', 'lake', 'reptile'\)"):
        omniglot.split(omniglot_small, scheme="mini")
    with pytest.raises(ValueError, match=r"'val'.*\('train', 'validation', 'test'\)"):
        omniglot.split_indices(omniglot_small, split="val")


def test_unknown_subset_or_size_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"'tiny'.*\('full', 'small'\)"):
        omniglot.load(data_dir=tmp_path, subset="tiny")
    with pytest.raises(ValueError, match=r"image_size.*\[1, 105\].*0"):
        omniglot.load(data_dir=tmp_path, image_size=0)


def test_online_path_downloads_canonical_urls_with_tfds_checksums(
        omniglot_archives_dir, tmp_path, monkeypatch, no_archive_env):
    # No archives_dir, env or manual dir: archives come from the TFDS download
    # manager, which checks them against TFDS's registered omniglot checksums.
    import tensorflow_datasets as tfds

    requested = {}

    def fake_download(self, urls):
        requested.update(urls)
        requested["force"] = self._force_checksums_validation
        requested["infos"] = {u: self._url_infos[u].checksum for u in urls.values()}
        return {name: os.path.join(omniglot_archives_dir, url.rsplit("/", 1)[-1])
                for name, url in urls.items()}

    import requests

    monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
    monkeypatch.setattr(requests, "head", lambda url, **kw: requested.setdefault("probe", url))
    data = omniglot.load(data_dir=tmp_path / "tfds", subset="small")
    assert data.images.shape == (242, 20, 28, 28)
    base = "https://github.com/brendenlake/omniglot/raw/master/python/"
    assert requested["images_background_small1"] == base + "images_background_small1.zip"
    assert requested["images_background_small2"] == base + "images_background_small2.zip"
    assert requested["force"] is True
    tfds_checksums = omniglot_builder.canonical_checksums()
    assert requested["infos"] == {base + f: tfds_checksums[f][1] for f in SMALL}


def test_offline_without_archives_fails_fast_saying_what_to_do(tmp_path, monkeypatch,
                                                                no_archive_env):
    import requests
    import tensorflow_datasets as tfds

    def offline(url, **kwargs):
        raise requests.exceptions.ConnectionError(f"cannot resolve {url}")

    def never(self, urls):
        raise AssertionError("TFDS's slow retrying download must not start when offline")

    monkeypatch.setattr(requests, "head", offline)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", never)
    with pytest.raises(omniglot_builder.OmniglotDownloadError) as e:
        omniglot.load(data_dir=tmp_path / "tfds", subset="small")
    assert "images_background_small1" in str(e.value)
    assert "TFMETA_OMNIGLOT_ARCHIVES" in str(e.value)


def test_concurrent_preparation_by_several_workers(omniglot_archives_dir, tmp_path):
    """Workers of one machine start together (local_cluster.sh): all of them load the dataset,
    one prepares it, none fails on another's half-finished preparation."""
    import subprocess
    import sys

    from tests.helpers import subprocess_env

    code = ("from tfmeta.data import omniglot; "
            f"d = omniglot.load(data_dir={str(tmp_path)!r}, subset='small'); "
            "print('characters', d.num_characters)")
    env = subprocess_env(TFMETA_OMNIGLOT_ARCHIVES=omniglot_archives_dir)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert "characters 242" in out
