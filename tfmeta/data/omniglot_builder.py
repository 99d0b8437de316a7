"""TFDS builder ``tfmeta_omniglot``: verified Omniglot archives -> prepared arrays.

The builder reads the original Omniglot zip archives (Lake et al., 2015) and
writes one TFDS example per character: its 20 drawings preprocessed as in MAML
(see :func:`preprocess_png`), plus alphabet, character and archive names.

Where the archives come from:

* ``archives_dir`` given (``tfmeta.data.omniglot.load`` passes the argument or
  ``$TFMETA_OMNIGLOT_ARCHIVES``): offline only. Every required archive must be
  in that directory; nothing is downloaded.
* Otherwise, per archive: TFDS's manual directory (``<data_dir>/downloads/manual``)
  if the file is there, else a download of the canonical URL through the TFDS
  download manager, which verifies it against the checksums TFDS registers for
  its own ``omniglot`` dataset (``force_checksums_validation``).

Local archives are verified before they are read (:func:`verify_archive`):
size and sha256 must equal either TFDS's registered checksum for the original
file or the pinned checksum of the pixel-identical repack shipped with the
project's offline data. Independently of the checksum, every archive is checked
structurally while it is decoded (expected alphabet and character counts,
exactly 20 decodable 105x105 drawings per character), so even a downloaded
file is never prepared unless it has the exact Omniglot layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from tfmeta.base import errors

NAME = "tfmeta_omniglot"
DRAWINGS_PER_CHARACTER = 20
ORIGINAL_SIZE = 105

_DL_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"


class OmniglotDownloadError(errors.UserError, ConnectionError):
    """The Omniglot archives are neither available locally nor downloadable."""


def _check_reachable(url: str, names: Sequence[str]) -> None:
    """Fails fast, with what to do, when the download server cannot be reached.

    TFDS retries a failed download for minutes before surfacing a raw connection error; one
    request (through any configured proxy) tells at once whether the machine is offline.
    """
    import requests  # a dependency of tensorflow-datasets

    try:
        requests.head(url, timeout=20, allow_redirects=True)
    except requests.exceptions.RequestException as e:
        raise OmniglotDownloadError(
            f"Omniglot archives {list(names)} are not available locally and {url} cannot be "
            f"reached ({type(e).__name__}). Offline, put the four Omniglot zip archives in a "
            "directory and set TFMETA_OMNIGLOT_ARCHIVES=DIR (or pass archives_dir / "
            "--config.data.archives_dir), or copy them to <data_dir>/downloads/manual/.") from e


class OmniglotIntegrityError(errors.UserError, ValueError):
    """An Omniglot archive is truncated, corrupted or not the expected file."""


@dataclasses.dataclass(frozen=True)
class ArchiveSpec:
    """What a valid Omniglot archive contains.

    Attributes:
        name: Archive stem, also its top-level folder (``images_background``).
        num_alphabets: Number of alphabet folders.
        num_characters: Number of character folders over all alphabets.
        repack_sha256: sha256 of the pixel-identical repack, or None when the
            offline copy is the byte-identical original.
        repack_size: Size in bytes of that repack.
    """

    name: str
    num_alphabets: int
    num_characters: int
    repack_sha256: str | None = None
    repack_size: int | None = None

    @property
    def filename(self) -> str:
        return f"{self.name}.zip"

    @property
    def url(self) -> str:
        return _DL_URL + self.filename


# The two large archives of the offline copy are lossless repacks: same
# pixels, different PNG encoder and zip metadata, hence different bytes. They
# are pinned here as a second known-good set. small1/small2 are the originals.
ARCHIVES: Mapping[str, ArchiveSpec] = {
    spec.name: spec
    for spec in (
        ArchiveSpec(
            "images_background", 30, 964,
            "749340b48da00908003f5bc8377c668407d4dc858970a1e4370fb72ed3e47927",
            9_006_415,
        ),
        ArchiveSpec(
            "images_evaluation", 20, 659,
            "70a16c4df57f6f6e2af712fa5c180007568a97aa4eee9c6f877924d608b264f9",
            6_163_654,
        ),
        ArchiveSpec("images_background_small1", 5, 136),
        ArchiveSpec("images_background_small2", 5, 156),
    )
}

# Subset name -> archives, in the order their characters are stored.
SUBSET_ARCHIVES: Mapping[str, tuple[str, ...]] = {
    "full": ("images_background", "images_evaluation"),
    "small": ("images_background_small1", "images_background_small2"),
}

# Split names of the prepared TFDS dataset, one per archive.
ARCHIVE_SPLITS: Mapping[str, str] = {
    "images_background": "background",
    "images_evaluation": "evaluation",
    "images_background_small1": "small1",
    "images_background_small2": "small2",
}


def canonical_checksums() -> dict[str, tuple[int, str]]:
    """Returns ``{filename: (size, sha256)}`` as registered by TFDS's omniglot.

    Read from the installed tensorflow-datasets package (the checksums file of
    its ``omniglot`` builder), so the canonical values are never copied here.
    """
    return {
        url.rsplit("/", 1)[-1]: (int(info.size), info.checksum)
        for url, info in tfds_url_infos().items()
    }


def tfds_url_infos() -> dict:
    """Returns TFDS's registered ``{url: UrlInfo}`` for its omniglot dataset.

    Raises:
        FileNotFoundError: If the installed tensorflow-datasets has none.
    """
    try:
        url_infos = tfds.builder_cls("omniglot").url_infos
    except ImportError:
        # Some installs lack importlib_resources, which TFDS needs to locate a
        # builder's code; the checksum files themselves are plain package data.
        url_infos = None
    if not url_infos:
        root = tfds.core.utils.tfds_path()
        for candidate in (root / "url_checksums" / "omniglot.txt",
                          root / "image_classification" / "omniglot" / "checksums.tsv",
                          root / "datasets" / "omniglot" / "checksums.tsv"):
            if candidate.exists():
                url_infos = tfds.core.download.checksums.load_url_infos(candidate)
                break
    if not url_infos:
        raise FileNotFoundError(
            "tensorflow-datasets registers no checksums for its omniglot dataset; "
            "cannot verify the canonical Omniglot archives.")
    return url_infos


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_archive(path: str | os.PathLike, name: str) -> str:
    """Checks an archive's size and sha256 against the known-good sets.

    Args:
        path: The archive file.
        name: Which archive it should be, a key of :data:`ARCHIVES`.

    Returns:
        ``"tfds"`` if it matches TFDS's registered checksum of the original,
        ``"repack"`` if it matches the pinned pixel-identical repack.

    Raises:
        OmniglotIntegrityError: If it matches neither; the message names the
            file, what it is and what was expected.
    """
    spec = ARCHIVES[name]
    path = os.fspath(path)
    size = os.path.getsize(path)
    known = {"tfds": canonical_checksums().get(spec.filename)}
    if spec.repack_sha256 is not None:
        known["repack"] = (spec.repack_size, spec.repack_sha256)
    # Compare sizes first: a truncated file is rejected without hashing it.
    candidates = {k: v for k, v in known.items() if v is not None and v[0] == size}
    digest = _sha256(path) if candidates else None
    for source, (_, sha) in candidates.items():
        if digest == sha:
            return source
    expected = "; ".join(
        f"{source}: {v[0]} bytes, sha256 {v[1]}"
        for source, v in known.items()
        if v is not None
    )
    raise OmniglotIntegrityError(
        f"Omniglot archive {path!r} is not a known-good {spec.filename}: it has "
        f"{size} bytes, sha256 {digest or _sha256(path)}; expected one of "
        f"[{expected}]. The file is truncated, corrupted or a different file; "
        "replace it with a fresh copy."
    )


def preprocess_png(png: bytes, image_size: int) -> np.ndarray:
    """Decodes one Omniglot PNG into MAML's representation.

    Steps: decode (1-bit, white background, black strokes) -> grayscale
    0/255 -> resize to ``image_size`` with PIL's LANCZOS filter (antialiased,
    as cbfinn/maml) -> invert, so strokes are bright and background is 0.
    As floats, ``x / 255 == 1 - lanczos(png / 255)`` up to uint8 rounding.

    Args:
        png: The PNG file contents.
        image_size: Output side length.

    Returns:
        uint8 array [image_size, image_size].

    Raises:
        ValueError: If the image is not 105x105.
    """
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        if image.size != (ORIGINAL_SIZE, ORIGINAL_SIZE):
            raise ValueError(f"image is {image.size}, expected 105x105")
        gray = image.convert("L")
    if image_size != ORIGINAL_SIZE:
        gray = gray.resize((image_size, image_size), resample=Image.LANCZOS)
    return 255 - np.asarray(gray, dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class ArchiveContents:
    """The characters of one archive in stored order.

    Attributes:
        name: Archive name.
        characters: ``"Alphabet/characterNN"`` per character, sorted.
        images: uint8 [num_characters, 20, S, S].
    """

    name: str
    characters: list[str]
    images: np.ndarray


def read_archive(path: str | os.PathLike, name: str, image_size: int) -> ArchiveContents:
    """Decodes and structurally verifies one Omniglot archive.

    Characters are ordered by (alphabet, character folder) name, drawings by
    file name; both are plain code-point sorts.

    Raises:
        OmniglotIntegrityError: If the zip is unreadable, a PNG does not
            decode, or the alphabet / character / drawing counts differ from
            the Omniglot layout.
    """
    spec = ARCHIVES[name]
    path = os.fspath(path)

    def fail(problem: str) -> OmniglotIntegrityError:
        return OmniglotIntegrityError(
            f"Omniglot archive {path!r} ({spec.filename}) is malformed: {problem}. "
            f"Expected {spec.name}/<alphabet>/<character>/<drawing>.png with "
            f"{spec.num_alphabets} alphabets, {spec.num_characters} characters "
            f"and {DRAWINGS_PER_CHARACTER} drawings each."
        )

    try:
        with zipfile.ZipFile(path) as archive:
            drawings: dict[str, list[str]] = {}
            for member in archive.namelist():
                parts = member.split("/")
                if len(parts) == 4 and parts[0] == spec.name and parts[3].endswith(".png"):
                    drawings.setdefault(f"{parts[1]}/{parts[2]}", []).append(member)
            characters = sorted(drawings)
            alphabets = {c.split("/")[0] for c in characters}
            if len(alphabets) != spec.num_alphabets or len(characters) != spec.num_characters:
                raise fail(f"found {len(alphabets)} alphabets and {len(characters)} characters")
            images = np.empty(
                (len(characters), DRAWINGS_PER_CHARACTER, image_size, image_size), np.uint8)
            for i, character in enumerate(characters):
                members = sorted(drawings[character])
                if len(members) != DRAWINGS_PER_CHARACTER:
                    raise fail(f"{character} has {len(members)} drawings")
                for j, member in enumerate(members):
                    # ZipFile.read checks each member's CRC-32.
                    images[i, j] = preprocess_png(archive.read(member), image_size)
    except OmniglotIntegrityError:
        raise
    # zlib.error: damaged deflate stream; SyntaxError: PIL's "broken PNG file".
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, SyntaxError) as e:
        raise fail(f"{type(e).__name__}: {e}") from e
    return ArchiveContents(name, characters, images)


@dataclasses.dataclass
class OmniglotConfig(tfds.core.BuilderConfig):
    """Builder config: which archives and which image size.

    Attributes:
        subset: ``"full"`` (background + evaluation) or ``"small"``
            (background_small1 + background_small2).
        image_size: Side length of the stored images.
    """

    subset: str = "full"
    image_size: int = 28


def make_config(subset: str, image_size: int) -> OmniglotConfig:
    """Returns the config for a subset and size (named ``<subset>_<size>``)."""
    if subset not in SUBSET_ARCHIVES:
        raise ValueError(f"Unknown Omniglot subset {subset!r}; allowed: {tuple(SUBSET_ARCHIVES)}")
    valid_int = isinstance(image_size, int) and not isinstance(image_size, bool)
    if not valid_int or not 1 <= image_size <= ORIGINAL_SIZE:
        raise ValueError(f"image_size must be an int in [1, 105], got {image_size!r}")
    for config in OmniglotBuilder.BUILDER_CONFIGS:
        if config.subset == subset and config.image_size == image_size:
            return config
    return OmniglotConfig(
        name=f"{subset}_{image_size}", subset=subset, image_size=image_size,
        description=f"Omniglot {subset} subset at {image_size}x{image_size}.")


class OmniglotBuilder(tfds.core.GeneratorBasedBuilder):
    """Omniglot characters, 20 preprocessed drawings per example."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "One example per character, MAML preprocessing."}
    BUILDER_CONFIGS = [
        OmniglotConfig(name="full_28", subset="full", image_size=28,
                       description="All 1623 characters at 28x28."),
        OmniglotConfig(name="small_28", subset="small", image_size=28,
                       description="background_small1 + small2 at 28x28."),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional. Place images_background.zip, images_evaluation.zip, "
        "images_background_small1.zip and images_background_small2.zip from "
        f"{_DL_URL} in the manual directory; archives that are absent are "
        "downloaded and verified against TFDS's registered checksums."
    )

    def __init__(self, *, archives_dir: str | os.PathLike | None = None, **kwargs):
        """Creates the builder.

        Args:
            archives_dir: If set, the only place archives are read from (no
                download). Otherwise TFDS's manual directory, then download.
            **kwargs: Passed to ``tfds.core.GeneratorBasedBuilder``.
        """
        self._archives_dir = os.fspath(archives_dir) if archives_dir else None
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls):
        # The online path reuses TFDS's registered checksums of its own
        # omniglot dataset; the download manager enforces them.
        return tfds_url_infos()

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            description=(
                "Omniglot (Lake et al. 2015), one example per character with its "
                f"{DRAWINGS_PER_CHARACTER} drawings resized to {size}x{size} "
                "(PIL LANCZOS), inverted so strokes are bright."),
            features=tfds.features.FeaturesDict({
                "images": tfds.features.Tensor(
                    shape=(DRAWINGS_PER_CHARACTER, size, size), dtype=np.uint8,
                    encoding=tfds.features.Encoding.ZLIB),
                "alphabet": tfds.features.Text(),
                "character": tfds.features.Text(),
                "archive": tfds.features.Text(),
                "index": np.int32,
            }),
            homepage="https://github.com/brendenlake/omniglot",
            citation=(
                "@article{lake2015human, title={Human-level concept learning through "
                "probabilistic program induction}, author={Lake, Brenden M and "
                "Salakhutdinov, Ruslan and Tenenbaum, Joshua B}, journal={Science}, "
                "volume={350}, number={6266}, pages={1332--1338}, year={2015}}"),
        )

    def _locate(self, dl_manager, names: Sequence[str]) -> dict[str, str]:
        """Returns verified archive paths, downloading only when allowed."""
        if self._archives_dir is not None:
            filenames = [ARCHIVES[n].filename for n in names]
            missing = [f for f in filenames
                       if not os.path.isfile(os.path.join(self._archives_dir, f))]
            if missing:
                raise FileNotFoundError(
                    f"Omniglot archives {missing} not found in {self._archives_dir!r} "
                    "(from the archives_dir argument or $TFMETA_OMNIGLOT_ARCHIVES). "
                    f"Required for subset {self.builder_config.subset!r}: {filenames}.")
            local_dir = self._archives_dir
        else:
            try:
                local_dir = os.fspath(dl_manager.manual_dir)
            except AssertionError:  # TFDS: manual dir absent or empty.
                local_dir = None
        paths, to_download = {}, {}
        for name in names:
            local = os.path.join(local_dir, ARCHIVES[name].filename) if local_dir else None
            if local and os.path.isfile(local):
                verify_archive(local, name)
                paths[name] = local
            else:
                to_download[name] = ARCHIVES[name].url
        if to_download:
            _check_reachable(next(iter(to_download.values())), sorted(to_download))
            paths.update({k: os.fspath(v) for k, v in dl_manager.download(to_download).items()})
        return paths

    def _split_generators(self, dl_manager):
        config = self.builder_config
        names = SUBSET_ARCHIVES[config.subset]
        paths = self._locate(dl_manager, names)
        contents = [read_archive(paths[n], n, config.image_size) for n in names]
        return {
            ARCHIVE_SPLITS[c.name]: self._generate_examples(c, examples)
            for c, examples in zip(contents, _assign_indices(contents))
        }

    def _generate_examples(self, contents: ArchiveContents, examples) -> Iterator:
        for index, row in examples:
            character = contents.characters[row]
            yield character, {
                "images": contents.images[row],
                "alphabet": character.split("/")[0],
                "character": character,
                "archive": contents.name,
                "index": index,
            }


def _assign_indices(contents: Sequence[ArchiveContents]) -> list[list[tuple[int, int]]]:
    """Numbers characters across archives, dropping verified duplicates.

    background_small1 and background_small2 both contain the Greek and Latin
    alphabets (50 identical characters). A duplicate is kept once, under the
    first archive, and only if its pixels are identical; otherwise the
    archives are inconsistent and preparation stops.

    Returns:
        Per archive, ``(global index, row in that archive)`` pairs.
    """
    seen: dict[str, tuple[int, int]] = {}
    result = []
    for a, archive in enumerate(contents):
        rows = []
        for row, character in enumerate(archive.characters):
            if character in seen:
                first_a, first_row = seen[character]
                if not np.array_equal(contents[first_a].images[first_row], archive.images[row]):
                    raise OmniglotIntegrityError(
                        f"{character} differs between {contents[first_a].name}.zip and "
                        f"{archive.name}.zip; expected identical drawings.")
                continue
            seen[character] = (a, row)
            rows.append((len(seen) - 1, row))
        result.append(rows)
    return result
