"""Omniglot for meta-learning: verified loading, MAML preprocessing, class splits.

``load`` prepares the ``tfmeta_omniglot`` TFDS dataset once (see
:mod:`tfmeta.data.omniglot_builder` for where archives come from and how they are
verified) and returns every character's drawings as one uint8 array, so
episode sampling (:mod:`tfmeta.data.episodes`) is pure TensorFlow on an in-memory
pool.

Image representation: ``images[c, d]`` is drawing ``d`` of character ``c``,
resized from 105x105 with PIL's LANCZOS filter and inverted relative to the
PNG: strokes are bright (up to 255), background is 0. A model fed
``decode_png(png) / 255`` (white background = 1) must apply ``1 - x`` (after
resizing the same way) to match.

Character order: archives in order (``images_background``,
``images_evaluation``; or ``images_background_small1``, ``..._small2``), then
alphabet folder name, then character folder name, each a code-point sort.
Drawings are in file-name order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from tfmeta.data import class_store, omniglot_builder
from tfmeta.base.choices import SPLIT_SCHEMES, SPLITS, SUBSETS  # noqa: F401  (re-exported)
from tfmeta.data.omniglot_builder import (  # noqa: F401  (re-exported)
    DRAWINGS_PER_CHARACTER,
    OmniglotIntegrityError,
    verify_archive,
)

ARCHIVES_ENV = "TFMETA_OMNIGLOT_ARCHIVES"
DEFAULT_SPLIT_SEED = 1  # cbfinn/maml shuffles with random.seed(1).

# cbfinn/maml: 1623 characters -> 1100 train / 100 validation / 423 test.
_MAML_SIZES = (1100, 100, 423)
# openai/supervised-reptile: 1623 characters -> 1200 train / 423 test, no validation split.
_REPTILE_TRAIN = 1200
# lake: fraction of the training alphabets held out for validation.
_LAKE_VALIDATION_FRACTION = 0.1
# Archives whose characters form the lake scheme's test split.
_LAKE_TEST_ARCHIVES = ("images_evaluation", "images_background_small2")


@dataclasses.dataclass(frozen=True, eq=False)
class OmniglotData:
    """All characters of an Omniglot subset, in the documented fixed order.

    Attributes:
        images: uint8 [num_characters, 20, S, S], strokes bright, background 0.
        alphabets: Alphabet name per character.
        characters: ``"Alphabet/characterNN"`` per character.
        background: True for characters of images_background (all of the
            small subset, whose archives are both drawn from it).
        archives: Archive each character was read from (for the small subset,
            the 50 characters present in both archives count as small1's).
    """

    images: np.ndarray
    alphabets: list[str]
    characters: list[str]
    background: np.ndarray
    archives: list[str]

    @property
    def num_characters(self) -> int:
        return int(self.images.shape[0])


def archives_dir_from_env() -> str | None:
    """Returns ``$TFMETA_OMNIGLOT_ARCHIVES`` if set and non-empty, else None."""
    return os.environ.get(ARCHIVES_ENV) or None


def builder(
    data_dir: str | os.PathLike | None = None,
    archives_dir: str | os.PathLike | None = None,
    image_size: int = 28,
    subset: str = "full",
) -> omniglot_builder.OmniglotBuilder:
    """Returns the TFDS builder ``tfmeta_omniglot/<subset>_<image_size>``.

    Args:
        data_dir: TFDS data directory; None uses TFDS's default
            (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
        archives_dir: Directory holding the zip archives; None falls back to
            ``$TFMETA_OMNIGLOT_ARCHIVES``, then to TFDS's manual directory
            ``<data_dir>/downloads/manual``, then to downloading.
        image_size: Side length of the stored images (1..105).
        subset: ``"full"`` (1623 characters) or ``"small"`` (242 characters of
            images_background_small1 + small2).
    """
    return omniglot_builder.OmniglotBuilder(
        data_dir=os.fspath(data_dir) if data_dir else None,
        config=omniglot_builder.make_config(subset, image_size),
        archives_dir=archives_dir or archives_dir_from_env(),
    )


def load(
    data_dir: str | os.PathLike | None = None,
    archives_dir: str | os.PathLike | None = None,
    image_size: int = 28,
    subset: str = "full",
) -> OmniglotData:
    """Prepares the dataset if needed and loads all characters into memory.

    Preparation happens once per (data_dir, subset, image_size); later calls
    read the prepared TFDS files and never touch the archives.

    Args:
        data_dir: TFDS data directory; None uses TFDS's default.
        archives_dir: Offline archive directory (see :func:`builder`).
        image_size: Side length of the images.
        subset: ``"full"`` or ``"small"``.

    Returns:
        The characters in the documented order.

    Raises:
        OmniglotIntegrityError: An archive failed verification.
        FileNotFoundError: ``archives_dir`` lacks a required archive.
        ValueError: Unknown subset or bad image size.
    """
    with class_store.preparation_lock(
            builder(data_dir, archives_dir, image_size, subset).data_dir):
        # Built under the lock: a builder made before another process finished preparing would
        # not see the prepared splits.
        dataset_builder = builder(data_dir, archives_dir, image_size, subset)
        prepared = dataset_builder.is_prepared()
        if not prepared:
            logging.info("Preparing Omniglot (%s, %dx%d) in %s; later runs reuse it.", subset,
                         image_size, image_size, dataset_builder.data_dir)
        # TFDS prints its own preparation banner on stdout; tfmeta's line above says it once.
        with contextlib.redirect_stdout(io.StringIO()) as banner:
            dataset_builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(force_checksums_validation=True))
        if banner.getvalue().strip():
            logging.debug("TFDS: %s", " ".join(banner.getvalue().split()))
    parts = [
        tfds.as_numpy(dataset_builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
        for split in dataset_builder.info.splits
    ]
    columns = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    order = np.argsort(columns["index"], kind="stable")
    if not np.array_equal(columns["index"][order], np.arange(len(order))):
        raise OmniglotIntegrityError(
            f"Prepared dataset {dataset_builder.data_dir!r} has inconsistent character "
            "indices; delete that directory to prepare it again.")
    text = lambda key: [v.decode("utf-8") for v in columns[key][order]]  # noqa: E731
    archives = text("archive")
    return OmniglotData(
        images=np.ascontiguousarray(columns["images"][order]),
        alphabets=text("alphabet"),
        characters=text("character"),
        background=np.array([a != "images_evaluation" for a in archives], np.bool_),
        archives=archives,
    )


def _check_choice(kind: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown Omniglot split {kind} {value!r}; allowed: {allowed}")


def _maml_split(num_characters: int, split: str, seed: int) -> np.ndarray:
    if num_characters == sum(_MAML_SIZES):
        num_train, num_val, _ = _MAML_SIZES
    else:  # Same proportions for other subsets (small: 164 / 15 / 63).
        num_train = round(num_characters * _MAML_SIZES[0] / sum(_MAML_SIZES))
        num_val = max(1, round(num_characters * _MAML_SIZES[1] / sum(_MAML_SIZES)))
    order = np.random.default_rng(seed).permutation(num_characters)
    bounds = {"train": (0, num_train), "validation": (num_train, num_train + num_val),
              "test": (num_train + num_val, num_characters)}[split]
    return order[bounds[0]:bounds[1]]


def _reptile_split(num_characters: int, split: str, seed: int) -> np.ndarray:
    num_train = (_REPTILE_TRAIN if num_characters == sum(_MAML_SIZES)
                 else round(num_characters * _REPTILE_TRAIN / sum(_MAML_SIZES)))
    order = np.random.default_rng(seed).permutation(num_characters)
    return {"train": order[:num_train], "validation": order[:0], "test": order[num_train:]}[split]


def with_rotations(images: np.ndarray) -> np.ndarray:
    """The four rotations of every character as separate characters: ``[4C, D, S, S]``.

    Character ``4c + k`` is character ``c`` rotated counter-clockwise by ``k * 90`` degrees (the
    Reptile reference code's augmentation of its training characters).
    """
    rotated = np.stack([np.rot90(images, k, axes=(2, 3)) for k in range(4)], axis=1)
    return np.ascontiguousarray(rotated.reshape(-1, *images.shape[1:]))


def _lake_split(data: OmniglotData, split: str, seed: int) -> np.ndarray:
    is_test = np.array([a in _LAKE_TEST_ARCHIVES for a in data.archives])
    if split == "test":
        return np.flatnonzero(is_test)
    # Validation holds out whole training alphabets, so it measures transfer
    # to unseen alphabets like the test split does.
    train_alphabets = sorted({a for a, t in zip(data.alphabets, is_test) if not t})
    num_val = max(1, round(len(train_alphabets) * _LAKE_VALIDATION_FRACTION))
    held_out = set(np.random.default_rng(seed).choice(train_alphabets, num_val, replace=False))
    in_val = np.array([a in held_out for a in data.alphabets])
    return np.flatnonzero(~is_test & (in_val == (split == "validation")))


def split_indices(
    data: OmniglotData, scheme: str = "maml", split: str = "train",
    seed: int = DEFAULT_SPLIT_SEED,
) -> np.ndarray:
    """Returns the sorted character indices (into ``data``) of a split.

    Schemes:
        ``maml``: all characters shuffled with ``seed``, then 1100 train / 100
            validation / 423 test as in cbfinn/maml (same proportions, i.e.
            164 / 15 / 63, for the small subset). cbfinn/maml shuffled an
            ``os.listdir`` order, so its exact split cannot be reproduced; the
            sizes and the procedure are the same.
        ``lake``: test = images_evaluation (659 characters, 20 alphabets);
            train = images_background minus validation; validation = 10% of
            the background alphabets (3 of 30), chosen with ``seed``. For the
            small subset: test = small2's own alphabets (106 characters),
            train/validation from small1's 5 alphabets (1 held out).
        ``reptile``: all characters shuffled with ``seed``, then 1200 train /
            423 test as in openai/supervised-reptile (same proportions for the
            small subset); the validation split is empty, as in the reference
            (which also shuffles differently: the procedure and sizes match,
            not the exact characters). Combine with ``with_rotations`` on the
            training split for the reference's class protocol.

    Args:
        data: Loaded Omniglot.
        scheme: One of :data:`SPLIT_SCHEMES`.
        split: One of :data:`SPLITS`.
        seed: Seed of the shuffle (maml) or validation alphabet choice (lake).

    Raises:
        ValueError: Unknown scheme or split.
    """
    _check_choice("scheme", scheme, SPLIT_SCHEMES)
    _check_choice("name", split, SPLITS)
    if scheme == "maml":
        indices = _maml_split(data.num_characters, split, seed)
    elif scheme == "reptile":
        indices = _reptile_split(data.num_characters, split, seed)
    else:
        indices = _lake_split(data, split, seed)
    return np.sort(indices)


def split(
    data: OmniglotData, scheme: str = "maml", split: str = "train",
    seed: int = DEFAULT_SPLIT_SEED,
) -> np.ndarray:
    """Returns the images of a split, uint8 [C, 20, S, S] (see split_indices)."""
    return data.images[split_indices(data, scheme, split, seed)]
