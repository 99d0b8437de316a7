"""Colour exports: RGB images of any size in, resized and normalised in the graph, served.

The model is a tiny 3-channel conv4 whose input transform (per-channel mean and std, no
inversion) is read from the work directory, where training records it. Tolerances: the graph's
resize is within one level (1/255) of PIL's LANCZOS per channel, so after division by the
smallest std the model inputs agree within 1/255/min(std); the SavedModel and tfmeta's in-process
adaptation run the same ops on the same inputs (1e-5).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.helpers import build_once
from tfmeta.run import exporter, tasks
from tfmeta.data import image_folders
from tfmeta.base import input_transform
from tfmeta.serving import serving_client
from tfmeta.base.input_transform import InputTransform

ATOL = 1e-5
SIZE, WAYS = 12, 3
TRANSFORM = InputTransform(SIZE, 3, invert=False, mean=(0.5, 0.45, 0.4), std=(0.25, 0.2, 0.3))
# One grey level of the resize, after the per-channel division.
LEVEL = 1 / 255 / min(TRANSFORM.std)


def _photos(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 RGB ``[count, height, width, 3]``: smooth colour blobs plus noise, like photos."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(count, 4, 4, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, [height, width], method="bilinear").numpy()
    noisy = smooth + rng.normal(0, 12, size=smooth.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def colour_export(tmp_path_factory):
    """A 3-way MAML conv4 (3 channels, 4 filters, 12x12), exported with a normalisation.

    The SavedModel is written once per pytest run and shared by the workers (with the metadata
    it was given); each worker builds its own model, which the seed makes equal to the exported
    one.
    """
    from tfmeta.run import config as config_lib
    from tfmeta.core import models
    from tfmeta.core.maml import MAML

    model = models.omniglot_conv4(WAYS, image_size=SIZE, channels=3, filters=4, seed=0)
    algorithm = MAML(model, inner_lr=0.4, inner_steps=1, eval_inner_steps=2)

    def build(root):
        workdir = str(root / "workdir")
        os.makedirs(workdir)
        input_transform.write(workdir, TRANSFORM)  # what training records when it starts
        config = config_lib.base_config()
        config.task, config.data.source = "images", "folder:/unused"
        config.data.update(channels=3, image_size=SIZE, ways=WAYS, normalize=True)
        config.inner.eval_steps = 2
        transform = tasks.input_transform_of(config, workdir)  # normalisation measured: recorded
        assert transform == TRANSFORM
        metadata = exporter.metadata_from_config(config, step=5, classification=True,
                                                 transform=transform)
        exporter.export(model, algorithm, str(root / "model"), metadata=metadata)
        (root / "metadata.json").write_text(json.dumps(metadata))

    root = build_once(tmp_path_factory, "colour_export", build)
    path = str(root / "model")
    return {"path": path, "algorithm": algorithm,
            "metadata": json.loads((root / "metadata.json").read_text()),
            "loaded": tf.saved_model.load(path)}


def _in_process(algorithm, sx, sy, qx, steps=2):
    return algorithm.adapt_and_predict(sx[None], sy[None], qx[None], steps=steps,
                                       bn_mode="support")[0].numpy()


def _episode(seed, height=SIZE, width=SIZE, queries=4):
    sx = _photos(WAYS, height, width, seed).astype(np.float32) / 255
    qx = _photos(queries, height, width, seed + 100).astype(np.float32) / 255
    return sx, np.arange(WAYS, dtype=np.int32), qx


def test_graph_resize_and_normalisation_equal_pil_and_numpy():
    # Wider than tall: Pillow resamples horizontally first, as the graph does (from Pillow 13 it
    # may start with the vertical pass for images much taller than wide).
    photos = _photos(6, 23, 37, seed=0)
    graph = exporter.preprocess_images(tf.constant(photos / 255, tf.float32), TRANSFORM).numpy()
    pil = np.stack([np.asarray(Image.fromarray(p, "RGB").resize((SIZE, SIZE), Image.LANCZOS))
                    for p in photos]).astype(np.float32) / 255
    diff = np.abs(graph - TRANSFORM.apply(pil))
    assert graph.shape == (6, SIZE, SIZE, 3)
    assert diff.max() <= LEVEL + 1e-5, diff.max()
    assert diff.mean() < 0.1 * LEVEL, diff.mean()
    # At the training size nothing is resampled: exactly the normalisation.
    exact = photos[:, :SIZE, :SIZE] / np.float32(255)
    np.testing.assert_allclose(
        exporter.preprocess_images(tf.constant(exact, tf.float32), TRANSFORM).numpy(),
        TRANSFORM.apply(exact.astype(np.float32)), atol=1e-6)


def test_the_export_adapts_as_tfmeta_does_in_process(colour_export):
    loaded, algorithm = colour_export["loaded"], colour_export["algorithm"]
    sx, sy, qx = _episode(1)
    out = loaded.signatures["adapt_and_predict"](support_images=sx, support_labels=sy,
                                                 query_images=qx)["logits"].numpy()
    want = _in_process(algorithm, TRANSFORM.apply(sx), sy, TRANSFORM.apply(qx))
    np.testing.assert_allclose(out, want, atol=ATOL)
    # Other sizes: the graph resizes each channel first.
    sx, sy, qx = _episode(2, height=30, width=41)
    out = loaded.signatures["adapt_and_predict"](support_images=sx, support_labels=sy,
                                                 query_images=qx)["logits"].numpy()
    pre = lambda x: exporter.preprocess_images(tf.constant(x), TRANSFORM)  # noqa: E731
    np.testing.assert_allclose(out, _in_process(algorithm, pre(sx), sy, pre(qx)), atol=ATOL)


def test_a_lone_query_equals_the_same_query_in_a_batch(colour_export):
    loaded = colour_export["loaded"]
    sx, sy, qx = _episode(3, height=20, width=16)
    sign = loaded.signatures["adapt_and_predict"]
    together = sign(support_images=sx, support_labels=sy, query_images=qx)["logits"].numpy()
    for i in range(len(qx)):
        alone = sign(support_images=sx, support_labels=sy, query_images=qx[i:i + 1])
        np.testing.assert_allclose(alone["logits"].numpy()[0], together[i], atol=ATOL)
    # Two tasks run task-batched (a grouped convolution): equal up to float32 round-off, which
    # the normalised inputs (magnitudes up to ~2.5) make a little larger than for [0, 1] pixels.
    batch = loaded.signatures["adapt_and_predict_batch"](
        support_images=np.stack([sx, sx]), support_labels=np.stack([sy, sy]),
        query_images=np.stack([qx, qx[::-1]]))["logits"].numpy()
    np.testing.assert_allclose(batch[0], together, atol=1e-4)
    np.testing.assert_allclose(batch[1], together[::-1], atol=1e-4)


def test_metadata_round_trip_and_signature_shapes(colour_export):
    path, loaded = colour_export["path"], colour_export["loaded"]
    meta = serving_client.read_metadata(path)
    assert serving_client.read_metadata(loaded) == meta
    assert meta.items() >= json.loads(json.dumps(colour_export["metadata"])).items()
    assert {k: meta[k] for k in exporter.TRANSFORM_FIELDS} == TRANSFORM.to_dict()
    assert exporter.transform_from_metadata(meta) == TRANSFORM
    assert meta["task"] == "images" and serving_client.channels_of(meta) == 3
    for name in ("support_images", "query_images"):
        text = meta["inputs"][name]
        assert "H, W, 3]" in text and "in [0, 1]" in text and "RGB" in text
        assert "any height and width" in text and "normalises" in text and "inverts" not in text
    args, inputs = loaded.signatures["adapt_and_predict"].structured_input_signature
    assert inputs["support_images"].shape.as_list() == [None, None, None, 3]
    assert inputs["query_images"].shape.as_list() == [None, None, None, 3]
    _, inputs = loaded.signatures["adapt_and_predict_batch"].structured_input_signature
    assert inputs["query_images"].shape.as_list() == [None, None, None, None, 3]
    _, inputs = loaded.signatures["predict"].structured_input_signature
    assert inputs["query_images"].shape.as_list() == [None, None, None, 3]


def test_an_omniglot_export_states_its_grayscale_inverted_transform(random_export):
    meta = serving_client.read_metadata(random_export["path"])
    assert {k: meta[k] for k in exporter.TRANSFORM_FIELDS} == {
        "image_size": 28, "channels": 1, "invert": True, "mean": [], "std": []}
    assert "H, W, 1]" in meta["inputs"]["query_images"]
    assert "grayscale" in meta["inputs"]["query_images"]
    assert "white background" in meta["inputs"]["query_images"]
    # The image size alone (every export before colour models) means the same transform.
    assert exporter.transform_from_metadata({"image_size": 28}) == \
        exporter.omniglot_transform(28) == exporter.transform_from_metadata(meta)


@pytest.mark.parametrize("model,given", [("colour", 1), ("grayscale", 3)])
def test_a_wrong_channel_count_is_one_line_naming_both(colour_export, model, given):
    from tests.unit.serving.test_serving_client import _FakeExport

    # The grayscale model: an export whose metadata states no channels (every Omniglot export
    # before colour models), whose signatures record any call.
    loaded = colour_export["loaded"] if model == "colour" else _FakeExport()
    want = 3 if model == "colour" else 1
    rng = np.random.default_rng(0)
    good = rng.uniform(size=(5, 28, 28, want)).astype(np.float32)
    bad = rng.uniform(size=(5, 28, 28, given)).astype(np.float32)
    for name, support, query in [("support_images", bad, good[:2]),
                                 ("query_images", good, bad[:2])]:
        with pytest.raises(serving_client.AdaptError) as info:
            serving_client.adapt_and_predict(loaded, support, [0, 1, 2, 0, 1], query)
        message = str(info.value)
        assert "\n" not in message and message.startswith(name), message
        assert f"has {given} channel" in message and f"model takes {want} channel" in message
    if model == "grayscale":
        assert loaded.threads == [], "refused before the model was called"
    # The signature itself refuses too (naming the input, not the counts).
    if model == "colour":
        with pytest.raises((TypeError, ValueError), match="query_images"):
            loaded.signatures["adapt_and_predict"](
                support_images=good, support_labels=np.arange(5, dtype=np.int32) % 3,
                query_images=bad)


def test_export_refuses_a_model_without_the_transforms_channels(tmp_path):
    from tfmeta.core import models
    from tfmeta.core.maml import MAML

    model = models.omniglot_conv4(WAYS, image_size=SIZE, channels=3, filters=4, seed=0)
    algorithm = MAML(model, inner_lr=0.4, inner_steps=1)
    meta = {"task": "omniglot", "ways": WAYS, "image_size": SIZE, "inner_steps": 1}
    with pytest.raises(exporter.ExportError, match=r"\[B, 12, 12, 1\].*1 channel \(grayscale\)"):
        exporter.export(model, algorithm, str(tmp_path / "m"), metadata=meta)
    assert not os.path.exists(tmp_path / "m")


def _write_folders(root, channels: int, size=(19, 26)):
    """``root/support/<class>/0.png`` per class and ``root/query/<i>.png``, RGB or grey PNGs."""
    height, width = size
    photos = _photos(WAYS + 4, height, width, seed=7)
    mode = "RGB" if channels == 3 else "L"
    pixels = photos if channels == 3 else photos.mean(-1).round().astype(np.uint8)
    files = []
    for i, p in enumerate(pixels):
        folder = (root / "support" / f"class_{i}") if i < WAYS else (root / "query")
        folder.mkdir(parents=True, exist_ok=True)
        name = folder / ("0.png" if i < WAYS else f"{i - WAYS}.png")
        Image.fromarray(p, mode).save(name)
        files.append(str(name))
    return str(root / "support"), str(root / "query"), files


def test_grey_image_files_are_converted_for_a_colour_model(colour_export, tmp_path):
    """Documented: image files are converted to the model's channels, as in training."""
    support, query, files = _write_folders(tmp_path / "grey", channels=1)
    grey = image_folders.read_images(files, SIZE, channels=3)
    _, from_grey = serving_client.classify(colour_export["loaded"], support, [query])
    # The same images saved as RGB with three equal channels: the same pixels, the same answers.
    for f in files:
        with Image.open(f) as image:
            image.convert("RGB").save(f)
    np.testing.assert_array_equal(image_folders.read_images(files, SIZE, channels=3), grey)
    _, from_rgb = serving_client.classify(colour_export["loaded"], support, [query])
    assert [(p.file, p.label, p.probabilities) for p in from_grey] == \
        [(p.file, p.label, p.probabilities) for p in from_rgb]


