"""tfmeta.serving.serving_client: folders or arrays in, a tfmeta SavedModel adapts, class names out.

Also: one reader of an export's metadata, the SavedModel run in a worker thread, errors naming
the path or value, and labels checked before the int32 conversion.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.helpers import archives_dir, write_image_folders
from tests.unit.data.test_image_folders import _INK8, _INK16, _ink, _nested_queries
from tfmeta.run import exporter
from tfmeta.serving import serving_client


def test_fewer_classes_are_masked_and_renormalised(random_export, tmp_path):
    support, query = write_image_folders(str(tmp_path), classes=3)
    classes, preds = serving_client.classify(random_export["path"], support, [query])
    assert classes == ["class_0", "class_1", "class_2"]
    assert [os.path.basename(p.file) for p in preds] == ["0.png", "1.png", "2.png", "3.png"]
    for p in preds:
        assert set(p.probabilities) == set(classes)
        assert abs(sum(p.probabilities.values()) - 1) < 1e-6
        assert p.label in classes and p.probability == max(p.probabilities.values())
    table = serving_client.format_table(preds)
    assert "class_" in table and "probability" in table
    # An explicit number of inner steps goes through the steps signature.
    _, zero = serving_client.classify(random_export["path"], support, [query], inner_steps=0)
    assert len(zero) == 4


@pytest.mark.parametrize("case,message", [
    ("too_many_classes", "6 class folders but the model was trained for 5 ways"),
    ("empty_class", "holds no images"),
    ("unreadable", "cannot read image"),
    ("missing_support", "does not exist"),
    ("missing_query", "query path"),
    ("no_class_folders", "no class subfolders"),
])
def test_bad_folders_raise_errors_naming_the_path(random_export, tmp_path, case, message):
    support, query = write_image_folders(str(tmp_path),
                                         classes=6 if case == "too_many_classes" else 2)
    queries = [query]
    bad_path = support
    if case == "empty_class":
        bad_path = os.path.join(support, "class_empty")
        os.makedirs(bad_path)
    elif case == "unreadable":
        bad_path = os.path.join(support, "class_0", "broken.png")
        with open(bad_path, "wb") as f:
            f.write(b"not an image")
    elif case == "missing_support":
        bad_path = support = str(tmp_path / "nowhere")
    elif case == "missing_query":
        bad_path = str(tmp_path / "missing.png")
        queries = [query, bad_path]
    elif case == "no_class_folders":
        bad_path = support = query
    with pytest.raises(serving_client.AdaptError, match=message) as info:
        serving_client.classify(random_export["path"], support, queries)
    assert bad_path in str(info.value)


def test_saved_model_not_made_by_tfmeta_is_named(plain_saved_model, tmp_path):
    support, query = write_image_folders(str(tmp_path))
    with pytest.raises(serving_client.AdaptError, match="no tfmeta 'metadata' signature") as info:
        serving_client.classify(plain_saved_model, support, [query])
    assert plain_saved_model in str(info.value) and "tfmeta.export" in str(info.value)


@pytest.mark.parametrize("case", ["empty_dir", "file", "missing"])
def test_path_that_is_not_a_saved_model_is_named(tmp_path, case):
    support, query = write_image_folders(str(tmp_path))
    path = str(tmp_path / "model")
    if case == "empty_dir":
        os.makedirs(path)
    elif case == "file":
        with open(path, "w") as f:
            f.write("not a model")
    with pytest.raises(serving_client.AdaptError) as info:
        serving_client.classify(path, support, [query])
    assert path in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("steps", [-1, 2**31])
def test_out_of_range_inner_steps_is_an_error(tmp_path, steps):
    support, query = write_image_folders(str(tmp_path))
    # Checked before anything is read, so the model path does not even matter.
    with pytest.raises(serving_client.AdaptError, match=f"inner_steps .* got {steps}"):
        serving_client.classify(str(tmp_path / "unused"), support, [query], inner_steps=steps)


def test_nested_queries_are_classified_and_printed(random_export, tmp_path):
    support, _ = write_image_folders(str(tmp_path))
    query, expected = _nested_queries(str(tmp_path / "nested"))
    _, preds = serving_client.classify(random_export["path"], support, [query])
    assert [p.file for p in preds] == expected
    table = serving_client.format_table(preds)
    assert all(f in table for f in expected)


class _FakeExport:
    """Just the signatures adapt uses, each recording the thread it runs in."""

    def __init__(self, logits=None, error=None):
        import tensorflow as tf

        self.threads = []
        self._logits, self._error = logits, error
        meta = tf.constant(json.dumps({"task": "omniglot", "ways": 5, "image_size": 28}))
        self.signatures = {"metadata": lambda: {"json": meta},
                           "adapt_and_predict": self._call,
                           "adapt_and_predict_steps": self._call}

    def _call(self, **inputs):
        import tensorflow as tf

        self.threads.append(threading.current_thread())
        if self._error is not None:
            raise self._error
        return {"logits": tf.constant(self._logits(inputs), tf.float32)}


def test_model_runs_in_a_worker_thread_and_results_come_back(tmp_path):
    support, query = write_image_folders(str(tmp_path), classes=2)
    # Logits favouring class (query index % 2), so results must come back per query, in order.
    fake = _FakeExport(logits=lambda inputs: np.eye(5)[np.arange(
        inputs["query_images"].shape[0]) % 2] * 10)
    classes, preds = serving_client.classify(fake, support, [query], inner_steps=7)
    assert [p.label for p in preds] == ["class_0", "class_1", "class_0", "class_1"]
    assert len(fake.threads) == 1 and fake.threads[0] is not threading.current_thread()
    assert fake.threads[0].daemon


@pytest.mark.parametrize("error,expected", [
    (RuntimeError("boom in the worker"), RuntimeError),
    ("invalid_argument", serving_client.AdaptError),
])
def test_errors_in_the_worker_are_raised_in_the_caller(tmp_path, error, expected):
    import tensorflow as tf

    if error == "invalid_argument":
        error = tf.errors.InvalidArgumentError(None, None, "inner_steps must be <= 10\n\t[[node]]")
    support, query = write_image_folders(str(tmp_path), classes=2)
    with pytest.raises(expected) as info:
        serving_client.classify(_FakeExport(error=error), support, [query])
    first = str(info.value).splitlines()[0]
    assert "boom in the worker" in first or "rejected the inputs: inner_steps must be" in first


def _unseen_episodes(root, episodes=4, ways=5, queries=5):
    """Episodes of unseen characters (images_evaluation, 105x105 PNGs) written as folders."""
    with zipfile.ZipFile(os.path.join(archives_dir(), "images_evaluation.zip")) as z:
        by_char: dict[str, list[str]] = {}
        for name in sorted(n for n in z.namelist() if n.endswith(".png")):
            by_char.setdefault(os.path.dirname(name), []).append(name)
        chars = sorted(by_char)
        rng = np.random.default_rng(0)
        picked = rng.choice(len(chars), episodes * ways, replace=False).reshape(episodes, ways)
        out = []
        for e, row in enumerate(picked):
            truth = {}
            for c in row:
                name = chars[c].replace("/", "_")
                drawings = by_char[chars[c]]
                folder = os.path.join(root, f"ep{e}", "support", name)
                os.makedirs(folder)
                with open(os.path.join(folder, "0.png"), "wb") as f:
                    f.write(z.read(drawings[0]))
                for q in range(queries):
                    path = os.path.join(root, f"ep{e}", "query", f"{name}_{q}.png")
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "wb") as f:
                        f.write(z.read(drawings[1 + q]))
                    truth[path] = name
            out.append((os.path.join(root, f"ep{e}", "support"),
                        os.path.join(root, f"ep{e}", "query"), truth))
    return out


def test_trained_model_classifies_unseen_characters(smoke_workdir, tmp_path):
    import tensorflow as tf

    loaded = tf.saved_model.load(os.path.join(smoke_workdir, "export"))
    episodes = _unseen_episodes(str(tmp_path))
    correct = total = 0
    for support, query, truth in episodes:
        _, preds = serving_client.classify(loaded, support, [query])
        correct += sum(p.label == truth[p.file] for p in preds)
        total += len(preds)
    # 5-way 1-shot: chance is 20%; the smoke model reaches ~60% on its own test split.
    assert correct / total >= 0.4, f"accuracy {correct}/{total}"


def test_one_query_gets_the_same_answer_alone_and_among_others(random_export, tmp_path):
    support, query = write_image_folders(str(tmp_path), classes=5)
    files = sorted(os.path.join(query, f) for f in os.listdir(query))
    _, together = serving_client.classify(random_export["path"], support, [query])
    for path, expected in zip(files, together):
        _, (alone,) = serving_client.classify(random_export["path"], support, [path])
        assert alone.label == expected.label
        for name, p in expected.probabilities.items():
            assert abs(alone.probabilities[name] - p) < 1e-5
    # Asked for explicitly, the transductive protocol normalises the queries together.
    _, trans = serving_client.classify(random_export["path"], support, [query], transductive=True)
    gap = max(abs(a.probabilities[k] - b.probabilities[k])
              for a, b in zip(trans, together) for k in a.probabilities)
    assert gap > 1e-4


def test_inner_steps_above_the_exports_bound_is_refused(random_export, tmp_path):
    support, query = write_image_folders(str(tmp_path))
    with pytest.raises(serving_client.AdaptError,
                       match="inner_steps must be between 0 and 100, got 101"):
        serving_client.classify(random_export["path"], support, [query], inner_steps=101)
    # Not an integer: refused before the model is loaded, without quoting the int32 limit.
    with pytest.raises(serving_client.AdaptError,
                       match=r"an integer between 0 and the export's max_inner_steps, got 2.5"):
        serving_client.classify(random_export["path"], support, [query], inner_steps=2.5)


def test_faint_16_bit_ink_is_classified_like_its_8_bit_equivalent(random_export, tmp_path,
                                                                  caplog):
    support = tmp_path / "support"
    for c in range(3):
        os.makedirs(support / f"class_{c}")
        Image.fromarray(np.where(_ink(seed=c), _INK8, 255).astype(np.uint8)).save(
            support / f"class_{c}" / "0.png")
    query = tmp_path / "query"
    os.makedirs(query)
    for q in range(3):
        ink = _ink(seed=q)
        Image.fromarray(np.where(ink, _INK16, 65535).astype(np.uint16)).save(query / f"{q}_16.png")
        Image.fromarray(np.where(ink, _INK8, 255).astype(np.uint8)).save(query / f"{q}_8.png")
    with caplog.at_level(logging.WARNING):
        _, preds = serving_client.classify(random_export["path"], str(support), [str(query)])
    assert "uniform" not in caplog.text  # nothing was read as blank
    by_name = {os.path.basename(p.file): p for p in preds}
    for q in range(3):
        deep, shallow = by_name[f"{q}_16.png"], by_name[f"{q}_8.png"]
        assert deep.label == shallow.label == f"class_{q}"
        for name, p in shallow.probabilities.items():
            assert abs(deep.probabilities[name] - p) < 0.02


# ----------------------------------------------------------------- labels from Python callers
@pytest.fixture(scope="module")
def loaded_export(random_export):
    import tensorflow as tf

    return tf.saved_model.load(random_export["path"])


def _episode_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(size=(5, 28, 28, 1)).astype(np.float32),
            rng.uniform(size=(2, 28, 28, 1)).astype(np.float32))


@pytest.mark.parametrize("labels,named", [
    (np.array([0.7, 1.2, 2.9, 3.1, 4.0]), "0.7"),            # the int32 cast would truncate
    ([0, 1, 2, 3.0, 4], "0.0"),  # NumPy makes the whole list float
    (np.array([0, 1, 2, 3, 2**32 + 4], np.int64), str(2**32 + 4)),  # would wrap around to 4
    ([0, 1, 2, 3, 2**31], str(2**31)),
    ([0, 1, 2, 3, 2**70], str(2**70)),
    ([0, 1, 2, 3, 5], "5"),
    (np.array([0, 1, -2, 3, 4], np.int32), "-2"),
    ([True, False, True, False, True], "True"),
    (np.array(["0", "1", "2", "3", "4"]), "'0'"),
])
def test_client_refuses_labels_the_int32_conversion_would_change(loaded_export, labels, named):
    sx, qx = _episode_arrays()
    with pytest.raises(serving_client.AdaptError,
                       match="support_labels must be integers in") as info:
        serving_client.adapt_and_predict(loaded_export, sx, labels, qx)
    message = str(info.value)
    assert "\n" not in message and f"got {named} at index" in message
    assert "[0, 5)" in message


@pytest.mark.parametrize("steps", [2.5, np.float64(3.0), 2**32 + 3, True])
def test_client_refuses_inner_steps_the_int32_conversion_would_change(loaded_export, steps):
    sx, qx = _episode_arrays()
    with pytest.raises(serving_client.AdaptError, match="inner_steps must be") as info:
        serving_client.adapt_and_predict(loaded_export, sx, np.arange(5), qx, inner_steps=steps)
    assert repr(steps) in str(info.value) or str(steps) in str(info.value)


def test_client_accepts_any_integer_labels_and_float64_images(loaded_export):
    sx, qx = _episode_arrays()
    expected = serving_client.adapt_and_predict(loaded_export, sx, np.arange(5, dtype=np.int32), qx)
    for labels in ([0, 1, 2, 3, 4], np.arange(5, dtype=np.int64), np.arange(5, dtype=np.uint8)):
        np.testing.assert_array_equal(
            serving_client.adapt_and_predict(loaded_export, sx, labels, qx, ways=5), expected)
    np.testing.assert_allclose(serving_client.adapt_and_predict(
        loaded_export, sx.astype(np.float64), np.arange(5), qx.astype(np.float64)), expected,
        atol=1e-6)


def test_one_read_metadata_for_a_directory_and_a_loaded_saved_model(random_export,
                                                                      loaded_export):
    from_path = serving_client.read_metadata(random_export["path"])
    assert from_path.items() >= random_export["metadata"].items()
    assert serving_client.read_metadata(loaded_export) == from_path
    assert exporter.read_metadata is serving_client.read_metadata


def test_read_metadata_names_a_saved_model_not_made_by_tfmeta(plain_saved_model):
    with pytest.raises(serving_client.AdaptError, match="not exported by tfmeta.export") as info:
        serving_client.read_metadata(plain_saved_model)
    assert plain_saved_model in str(info.value) and "\n" not in str(info.value)
