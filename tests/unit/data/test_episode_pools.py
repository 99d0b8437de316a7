"""Episodes of any split: uneven classes, colour images, shards on disk, crop and flip."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf

from tfmeta.data import class_store, episodes
from tfmeta.data.class_listing import ClassImages, Listing
from tfmeta.data.episodes import EpisodeSpec, ImagePool, ShardPool


def _identity_decode(item, *, name, size, channels, resize, min_side):
    return item


def labelled_images(counts, size=4, channels=3):
    """Images whose first pixel encodes (class, index): every image is identifiable."""
    classes = []
    for c, n in enumerate(counts):
        images = np.zeros((n, size, size, channels), np.uint8)
        images[:, 0, 0, 0] = c
        images[:, 0, 1, 0] = np.arange(n) % 256
        images[:, 0, 2, 0] = np.arange(n) // 256
        images[:, 1:, :, :] = np.random.default_rng(c).integers(
            0, 256, (n, size - 1, size, channels), dtype=np.uint8)
        classes.append(images)
    return classes


def _identity(x: np.ndarray) -> tuple[int, int]:
    """(class, index) of an image made by labelled_images (pixels / 255 undone)."""
    p = np.rint(x * 255).astype(int)
    return int(p[0, 0, 0]), int(p[0, 1, 0] + 256 * p[0, 2, 0])


def prepared_pools(tmp_path, counts, size=4, channels=3, records_per_shard=None, monkeypatch=None):
    classes = labelled_images(counts, size, channels)
    listing = Listing({"train": [ClassImages(f"c{i}", list(x), [f"c{i}/{j}" for j in range(len(x))])
                                 for i, x in enumerate(classes)]}, fingerprint="f", origin="test")
    if records_per_shard is not None and monkeypatch is not None:
        monkeypatch.setattr(class_store, "TARGET_SHARD_BYTES", records_per_shard * size * size
                            * channels)
    prepared = class_store.prepare(listing, str(tmp_path / "prepared"), image_size=size,
                                   channels=channels, decode=_identity_decode, workers=1)
    index = list(range(len(counts)))
    memory = ImagePool(prepared.read("train", index), counts)
    files, first = prepared.files("train", index)
    shards = ShardPool(files, first, counts, prepared.records_per_shard, prepared.image_shape)
    return classes, memory, shards


def test_memory_and_shard_pools_give_identical_episodes(tmp_path, monkeypatch):
    counts = [7, 12, 5, 9, 30, 6]
    _, memory, shards = prepared_pools(tmp_path, counts, records_per_shard=4,
                                       monkeypatch=monkeypatch)
    assert len(shards.files) == sum(-(-n // 4) for n in counts)
    spec = EpisodeSpec(3, 2, 3, rotate=True)
    a = episodes.episode_dataset(memory, spec, seed=5, batch_size=4, pipeline_id=1)
    b = episodes.episode_dataset(shards, spec, seed=5, batch_size=4, pipeline_id=1)
    for x, y in zip(a.take(3), b.take(3)):
        for key in x:
            np.testing.assert_array_equal(x[key].numpy(), y[key].numpy())


def test_uneven_classes_give_distinct_images_of_one_class_each(tmp_path, monkeypatch):
    counts = [5, 40, 6, 5, 11]
    classes, memory, shards = prepared_pools(tmp_path, counts, records_per_shard=3,
                                             monkeypatch=monkeypatch)
    spec = EpisodeSpec(3, 1, 4, rotate=False)
    for pool in (memory, shards):
        for e in episodes.episode_dataset(pool, spec, seed=1).take(20):
            x = np.concatenate([e["support_x"].numpy().reshape(3, 1, 4, 4, 3),
                                e["query_x"].numpy().reshape(3, 4, 4, 4, 3)], axis=1)
            for label in range(3):
                ids = [_identity(img) for img in x[label]]
                assert len({c for c, _ in ids}) == 1  # one class per label
                assert len({i for _, i in ids}) == 5  # K + Q distinct images
                c = ids[0][0]
                for _, i in ids:
                    assert i < counts[c]
                    np.testing.assert_allclose(x[label][[j for j, (_, k) in enumerate(ids)
                                                         if k == i][0]],
                                               classes[c][i] / 255.0, atol=1e-6)


def test_class_and_image_frequencies_are_uniform_for_both_pools(tmp_path, monkeypatch):
    """Streaming and in-memory episodes have the same distribution: classes uniformly, and within
    a class every image equally often (checked with a chi-square bound), uneven classes too."""
    counts = [6, 10, 6, 8]
    _, memory, shards = prepared_pools(tmp_path, counts, records_per_shard=4,
                                       monkeypatch=monkeypatch)
    spec = EpisodeSpec(2, 1, 2, rotate=False)
    episodes_count = 600
    for pool in (memory, shards):
        class_freq, image_freq = collections.Counter(), collections.Counter()
        batch = next(iter(episodes.episode_dataset(pool, spec, seed=3, batch_size=episodes_count)))
        x = np.concatenate([batch["support_x"].numpy(), batch["query_x"].numpy()], axis=1)
        for image in x.reshape(-1, 4, 4, 3):
            c, i = _identity(image)
            image_freq[(c, i)] += 1
        for e in range(episodes_count):
            for label in range(2):
                class_freq[_identity(batch["support_x"].numpy()[e, label])[0]] += 1
        expected_class = episodes_count * 2 / len(counts)
        chi2 = sum((class_freq[c] - expected_class) ** 2 / expected_class
                   for c in range(len(counts)))
        assert chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001
        for c, n in enumerate(counts):
            seen = [image_freq[(c, i)] for i in range(n)]
            expected = sum(seen) / n
            chi2 = sum((s - expected) ** 2 / expected for s in seen)
            assert chi2 < 30, (c, seen)  # <= 9 degrees of freedom, p < 0.001


def test_shard_pool_reads_only_what_it_samples(tmp_path, monkeypatch):
    """A shard that no episode uses may be missing: nothing reads it."""
    counts = [4, 4, 4]
    _, _, shards = prepared_pools(tmp_path, counts, records_per_shard=4, monkeypatch=monkeypatch)
    spec = EpisodeSpec(2, 1, 1, rotate=False)
    ds = episodes.episode_dataset(shards, spec, seed=0)
    used = {_identity(e["support_x"].numpy()[j])[0] for e in ds.take(1) for j in range(2)}
    unused = ({0, 1, 2} - used).pop()
    import os
    os.remove(shards.files[unused])
    next(iter(ds))  # the same first episode again: reads only its own classes
    ds_all = episodes.episode_dataset(shards, spec, seed=0).take(50)
    with pytest.raises(tf.errors.NotFoundError):
        for _ in ds_all:
            pass


def test_rotation_of_colour_images_rotates_each_channel():
    pool = np.random.default_rng(0).integers(0, 256, (3, 5, 6, 6, 3), dtype=np.uint8)
    image_pool = ImagePool(pool.reshape(-1, 6, 6, 3), [5, 5, 5])
    spec = EpisodeSpec(3, 1, 1, rotate=True)
    e = episodes.sample_episode(image_pool, spec, episodes.episode_seed(0, 0, 0))
    candidates = {np.rot90(pool[c, d], k, axes=(0, 1)).tobytes()
                  for c in range(3) for d in range(5) for k in range(4)}
    for image in np.concatenate([e["support_x"].numpy(), e["query_x"].numpy()]):
        assert np.rint(image * 255).astype(np.uint8).tobytes() in candidates


def test_crop_and_flip_are_shifted_windows_of_the_padded_image():
    size, pad = 6, 2
    pool = np.random.default_rng(1).integers(1, 256, (4, 3, size, size, 3), dtype=np.uint8)
    image_pool = ImagePool(pool.reshape(-1, size, size, 3), [3] * 4)
    spec = EpisodeSpec(2, 1, 2, rotate=False, augment=True, crop_padding=pad)
    flips, shifts = set(), set()
    for i in range(20):
        e = episodes.sample_episode(image_pool, spec, episodes.episode_seed(0, 0, i))
        for image in np.concatenate([e["support_x"].numpy(), e["query_x"].numpy()]):
            image = np.rint(image * 255).astype(np.uint8)
            found = False
            for c in range(4):
                for d in range(3):
                    padded = np.pad(pool[c, d], [[pad, pad], [pad, pad], [0, 0]])
                    for flip in (False, True):
                        source = padded[:, ::-1] if flip else padded
                        for dy in range(2 * pad + 1):
                            for dx in range(2 * pad + 1):
                                window = source[dy:dy + size, dx:dx + size]
                                if np.array_equal(window, image):
                                    found = True
                                    flips.add(flip)
                                    shifts.add((dy, dx))
            assert found
    assert flips == {False, True} and len(shifts) > 10


def test_normalization_is_per_channel():
    pool = np.random.default_rng(2).integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    image_pool = ImagePool(pool, [2, 2, 2])
    spec = EpisodeSpec(2, 1, 1, rotate=False)
    seed = episodes.episode_seed(0, 0, 0)
    plain = episodes.sample_episode(image_pool, spec, seed)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.25, 0.5)
    normalised = episodes.sample_episode(image_pool, spec, seed, normalization=(mean, std))
    np.testing.assert_allclose(normalised["query_x"].numpy(),
                               (plain["query_x"].numpy() - np.array(mean)) / np.array(std),
                               rtol=1e-5, atol=1e-5)


def test_validate_names_the_smallest_class():
    pool = ImagePool(np.zeros((9, 4, 4, 3), np.uint8), [5, 2, 2])
    with pytest.raises(ValueError, match=r"1 \+ 2 = 3 exceeds the 2 drawings"):
        episodes.validate(pool, EpisodeSpec(2, 1, 2, rotate=False))
    with pytest.raises(ValueError, match="rotate=True needs square images, got 4x5"):
        episodes.validate(ImagePool(np.zeros((4, 4, 5, 1), np.uint8), [2, 2]),
                          EpisodeSpec(1, 1, 1))
    with pytest.raises(ValueError, match="counts sum to 3"):
        ImagePool(np.zeros((2, 4, 4, 1), np.uint8), [1, 2])


def test_streamed_augmented_episodes_resume_exactly(tmp_path, monkeypatch):
    counts = [5, 7, 6]
    _, _, shards = prepared_pools(tmp_path, counts, records_per_shard=2, monkeypatch=monkeypatch)
    spec = EpisodeSpec(2, 1, 2, rotate=False, augment=True, crop_padding=1)
    whole = list(episodes.episode_dataset(shards, spec, seed=9, batch_size=2).take(3))
    resumed = list(episodes.episode_dataset(shards, spec, seed=9, batch_size=2,
                                            start_index=2).take(2))
    for a, b in zip(whole[1:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    other = next(iter(episodes.episode_dataset(shards, spec, seed=10, batch_size=2)))
    assert not np.array_equal(other["query_x"].numpy(), whole[0]["query_x"].numpy())


# Digest of the episodes below as tfmeta 0.2.0 drew them, before the sampler took pools of any
# classes: a changed digest means Omniglot runs would no longer see the episodes of their seed.
_OMNIGLOT_EPISODES_DIGEST = "121aa64ee2a5548f6b62458147763d2b094702a6a3eb24929a8c5eb2af47de30"


def test_omniglot_episodes_for_a_seed_are_unchanged():
    import hashlib

    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, size=(30, 20, 28, 28), dtype=np.uint8)
    out = {}
    for rotate in (True, False):
        spec = EpisodeSpec(5, 1, 5, rotate=rotate)
        ds = episodes.episode_dataset(pool, spec, seed=7, pipeline_id=1, start_index=3,
                                      batch_size=4)
        for key, value in next(iter(ds)).items():
            out[f"{rotate}_{key}"] = value.numpy()
        one = episodes.sample_episode(pool, spec, episodes.episode_seed(7, 1, 5))
        for key, value in one.items():
            out[f"single_{rotate}_{key}"] = value.numpy()
    digest = hashlib.sha256()
    for key in sorted(out):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(out[key]).tobytes())
    assert digest.hexdigest() == _OMNIGLOT_EPISODES_DIGEST
