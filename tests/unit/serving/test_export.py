"""Fast-adaptation SavedModels: equal to in-process adaptation, strict, nothing lost.

Tolerances: the SavedModel and tfmeta's in-process ``adapt`` + ``predict`` run the same ops, so
logits agree to 1e-5 (absolute). The graph's resize agrees with the training preprocessing (PIL
LANCZOS on uint8 images) within one grey level, 1/255.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import archives_dir, file_tree
from tfmeta.run import exporter
from tfmeta.serving import writer
from tfmeta.core import inner_loop

ATOL = 1e-5


def _episode(seed: int, ways: int = 5, shots: int = 1, queries: int = 3, size: int = 28):
    rng = np.random.default_rng(seed)
    # Quantised like decoded PNGs, white-ish background with dark strokes.
    sx = np.round(rng.uniform(size=(ways * shots, size, size, 1)) * 255) / 255
    qx = np.round(rng.uniform(size=(ways * queries, size, size, 1)) * 255) / 255
    sy = np.repeat(np.arange(ways), shots)
    return sx.astype(np.float32), sy.astype(np.int32), qx.astype(np.float32)


def _omniglot_pngs(count: int) -> list[bytes]:
    with zipfile.ZipFile(os.path.join(archives_dir(), "images_evaluation.zip")) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".png"))[:count]
        return [z.read(n) for n in names]


def _in_process(algorithm, sx, sy, qx, steps, bn_mode="support"):
    """tfmeta's own adaptation on already-preprocessed (training representation) inputs.

    ``bn_mode="support"`` is what the export serves by default for models with batch norm.
    """
    return algorithm.adapt_and_predict(sx[None], sy[None], qx[None], steps=steps,
                                       bn_mode=bn_mode)[0].numpy()


# The start of a child process that cannot import tfmeta (it also runs outside the repository).
_NO_TFMETA = textwrap.dedent("""
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "tfmeta" or name.startswith("tfmeta."):
                raise ImportError("tfmeta must not be imported")
    sys.meta_path.insert(0, _Block())
""")


def test_resize_matches_training_preprocessing():
    """The graph's resize + inversion vs. tfmeta.data.omniglot's PIL preparation, on real PNGs."""
    from tfmeta.data import omniglot_builder

    pngs = _omniglot_pngs(40)
    decoded = np.stack([tf.image.decode_png(p, channels=1).numpy() for p in pngs]) / 255.0
    graph = exporter.preprocess_images(tf.constant(decoded, tf.float32), 28).numpy()[..., 0]
    training = np.stack([omniglot_builder.preprocess_png(p, 28) for p in pngs]) / 255.0
    diff = np.abs(graph - training)
    assert diff.max() <= 1 / 255 + 1e-6, diff.max()
    assert diff.mean() < 1e-3
    # 28x28 input: exactly the inversion.
    small = training[:4, ..., None].astype(np.float32)
    np.testing.assert_array_equal(exporter.preprocess_images(tf.constant(1 - small), 28).numpy(),
                                  1 - (1 - small))


@pytest.fixture(scope="module")
def loaded(random_export):
    return tf.saved_model.load(random_export["path"])


def _bad(**changes):
    sx, sy, qx = _episode(3)
    kw = dict(support_images=sx, support_labels=sy, query_images=qx)
    kw.update(changes)
    return kw


_NAN = _episode(3)[0].copy()
_NAN[1, 3, 4, 0] = np.nan


@pytest.mark.parametrize("changes,message", [
    (dict(support_labels=np.array([0, 1, 2, 3, 5], np.int32)), "found a label >= 5"),
    (dict(support_labels=np.array([0, 1, -1, 3, 4], np.int32)), "found a negative label"),
    (dict(support_labels=np.arange(4, dtype=np.int32)), "same number of examples"),
    (dict(support_images=np.zeros((0, 28, 28, 1), np.float32),
          support_labels=np.zeros((0,), np.int32)), "support set needs at least one example"),
    (dict(support_images=_NAN), "support_images contains NaN"),
    (dict(query_images=np.full((2, 28, 28, 1), np.nan, np.float32)), "query_images contains NaN"),
    (dict(support_images=_episode(3)[0] * 255), "were the images divided by 255"),
    (dict(query_images=np.zeros((2, 0, 28, 1), np.float32)), "positive height and width"),
])
def test_bad_input_raises_named_error(loaded, changes, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["adapt_and_predict"](**_bad(**changes))


@pytest.mark.parametrize("changes", [
    dict(support_images=np.zeros((5, 28, 28), np.float32)),  # rank 3
    dict(query_images=np.zeros((2, 28, 28, 3), np.float32)),  # 3 channels
])
def test_wrong_rank_or_channels_is_rejected_naming_the_input(loaded, changes):
    (name,) = changes
    # The signature declares [None, None, None, 1]: the runtime rejects other shapes before the
    # graph runs, naming the input and the expected shape.
    with pytest.raises((TypeError, ValueError), match=name):
        loaded.signatures["adapt_and_predict"](**_bad(**changes))


def test_inner_steps_are_bounded_in_the_graph(loaded, random_export):
    with pytest.raises(tf.errors.InvalidArgumentError, match="inner_steps must be >= 0"):
        loaded.signatures["adapt_and_predict_steps"](**_bad(), inner_steps=tf.constant(-1))
    bound = exporter.read_metadata(random_export["path"])["max_inner_steps"]
    assert bound == exporter.DEFAULT_MAX_INNER_STEPS
    loaded.signatures["adapt_and_predict_steps"](**_bad(), inner_steps=tf.constant(bound))
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"inner_steps must be <= {bound}"):
        loaded.signatures["adapt_and_predict_steps"](**_bad(), inner_steps=tf.constant(10**6))


def test_max_inner_steps_is_set_at_export(random_export, tmp_path):
    model, algorithm = random_export["model"], random_export["algorithm"]
    path = exporter.export(model, algorithm, str(tmp_path / "m"), metadata=random_export["metadata"],
                         max_inner_steps=4)
    assert exporter.read_metadata(path)["max_inner_steps"] == 4
    with pytest.raises(tf.errors.InvalidArgumentError, match="inner_steps must be <= 4"):
        tf.saved_model.load(path).signatures["adapt_and_predict_steps"](
            **_bad(), inner_steps=tf.constant(5))
    with pytest.raises(exporter.ExportError, match="max_inner_steps is 2; it must be >= the "
                                                 "default inner_steps"):
        exporter.export(model, algorithm, str(tmp_path / "n"), metadata=random_export["metadata"],
                      max_inner_steps=2)


def test_fewer_classes_than_ways_is_allowed(loaded):
    sx, sy, qx = _episode(4, ways=3)
    out = loaded.signatures["adapt_and_predict"](support_images=sx, support_labels=sy,
                                                 query_images=qx)
    assert out["logits"].shape == (9, 5)


def test_export_is_atomic(random_export, tmp_path, monkeypatch):
    path = str(tmp_path / "model")
    shutil.copytree(random_export["path"], path)
    real = writer._write_saved_model

    def fail_midway(module, target, signatures):
        os.makedirs(os.path.join(target, "variables"))
        with open(os.path.join(target, "saved_model.pb"), "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer, "_write_saved_model", fail_midway)
    model, algorithm = random_export["model"], random_export["algorithm"]
    with pytest.raises(RuntimeError, match="disk full"):
        exporter.export(model, algorithm, path, metadata=dict(random_export["metadata"], step=7),
                      replace=True)
    assert sorted(os.listdir(tmp_path)) == ["model"], "no temporary directory may be left"
    assert exporter.read_metadata(path).items() >= random_export["metadata"].items()

    # A killed export leaves a temporary sibling holding its marker (and, killed mid-swap, only
    # the moved-aside previous model): the next export recovers that model and cleans up.
    dead = f"{path}.tfmeta-tmp-0123456789ab"
    os.makedirs(f"{dead}/variables")
    with open(os.path.join(dead, writer._TEMP_MARKER), "w") as f:
        f.write(json.dumps({"pid": 0, "host": "elsewhere"}))
    os.rename(path, f"{path}.tfmeta-old-0123456789ab")
    writer._clean_stale(path)
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert exporter.read_metadata(path).items() >= random_export["metadata"].items()

    # A complete export replaces the previous model.
    monkeypatch.setattr(writer, "_write_saved_model", real)
    exporter.export(model, algorithm, path, metadata=dict(random_export["metadata"], step=7),
                  replace=True)
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert exporter.read_metadata(path)["step"] == 7
    assert tf.saved_model.load(path).signatures["adapt_and_predict"] is not None


def test_reptile_adam_minibatch_export_matches_in_process(tmp_path):
    """Reptile's Adam inner loop on support minibatches: the same schedule as in process."""
    from tfmeta.core import models
    from tfmeta.core.reptile import Reptile

    model = models.omniglot_conv4(5, filters=4, seed=1)
    algorithm = Reptile(model, inner_lr=1e-2, inner_steps=2, eval_inner_steps=4,
                        inner_optimizer="adam", inner_batch_size=3)
    meta = {"task": "omniglot", "ways": 5, "image_size": 28, "inner_steps": 4}
    path = exporter.export(model, algorithm, str(tmp_path / "reptile"), metadata=meta)
    loaded = tf.saved_model.load(path)
    sx, sy, qx = _episode(5, shots=2)
    out = loaded.signatures["adapt_and_predict"](support_images=sx, support_labels=sy,
                                                 query_images=qx)["logits"].numpy()
    np.testing.assert_allclose(out, _in_process(algorithm, 1 - sx, sy, 1 - qx, 4), atol=ATOL)
    full = _in_process(Reptile(model, inner_lr=1e-2, inner_steps=2, inner_optimizer="adam"),
                       1 - sx, sy, 1 - qx, 4)
    assert not np.allclose(out, full, atol=1e-4), "minibatches must differ from the full set"


@pytest.mark.parametrize("algo", ["maml", "reptile_minibatch", "imaml"])
def test_sinusoid_regression_export(tmp_path, algo):
    from tfmeta.core import models
    from tfmeta.core.maml import MAML
    from tfmeta.core.reptile import Reptile

    model = models.sinusoid_mlp(seed=0)
    # Both sides of inner_loop.UNROLL_MAX_STEPS: MAML's default adaptation is unrolled in the graph,
    # Reptile's runs as a while loop.
    steps = 10 if algo == "maml" else 25
    assert (steps > inner_loop.UNROLL_MAX_STEPS) == (algo != "maml")
    if algo == "maml":
        algorithm = MAML(model, inner_lr=0.01, inner_steps=1, eval_inner_steps=steps, loss="mse")
    elif algo == "imaml":  # the proximal inner loop, served like any other
        from tfmeta.core.imaml import IMAML

        algorithm = IMAML(model, inner_lr=0.01, inner_steps=5, eval_inner_steps=steps, lam=0.5,
                          loss="mse")
    else:  # Reptile with inner minibatches of 4 of the 10 support points
        algorithm = Reptile(model, inner_lr=0.02, inner_steps=5, eval_inner_steps=steps,
                            inner_batch_size=4, loss="mse")
    meta = {"task": "sinusoid", "inner_steps": steps}
    path = exporter.export(model, algorithm, str(tmp_path / "sine"), metadata=meta,
                         classification=False)
    loaded = tf.saved_model.load(path)
    rng = np.random.default_rng(0)
    sx = rng.uniform(-5, 5, (3, 10, 1)).astype(np.float32)
    sy, qx = np.sin(sx).astype(np.float32), rng.uniform(-5, 5, (3, 7, 1)).astype(np.float32)
    out = loaded.signatures["adapt_and_predict"](support_x=sx[0], support_y=sy[0],
                                                 query_x=qx[0])["predictions"].numpy()
    np.testing.assert_allclose(out, _in_process(algorithm, sx[0], sy[0], qx[0], steps),
                               atol=ATOL)
    before = loaded.signatures["predict"](query_x=qx[0])["predictions"].numpy()
    assert not np.allclose(out, before, atol=1e-4), "adaptation changed nothing"
    batch = loaded.signatures["adapt_and_predict_batch"](support_x=sx, support_y=sy,
                                                         query_x=qx)["predictions"].numpy()
    for i in range(3):
        single = loaded.signatures["adapt_and_predict"](support_x=sx[i], support_y=sy[i],
                                                        query_x=qx[i])["predictions"].numpy()
        np.testing.assert_allclose(batch[i], single, atol=ATOL)
    with pytest.raises(tf.errors.InvalidArgumentError, match="same number of examples"):
        loaded.signatures["adapt_and_predict"](support_x=sx[0], support_y=sy[0, :3],
                                               query_x=qx[0])


def _export_small(tmp_path, name, bn_mode):
    from tfmeta.core import maml, models, reptile

    model = models.omniglot_conv4(5, filters=8, seed=3)
    make = {
        "maml": lambda: maml.MAML(model, inner_lr=0.4, inner_steps=1, eval_inner_steps=3,
                                  bn_mode=bn_mode),
        "mamlpp": lambda: maml.MAMLpp(model, inner_lr=0.4, inner_steps=2, bn_mode=bn_mode),
        "metasgd": lambda: maml.MetaSGD(model, inner_lr=0.4, inner_steps=1, bn_mode=bn_mode),
        "anil": lambda: maml.ANIL(model, inner_lr=0.4, inner_steps=1, bn_mode=bn_mode),
        # Adam on minibatches, as the Reptile configs train: the conv biases before batch norm
        # (gradient zero in exact arithmetic) must not move by lr * sign(round-off).
        "reptile": lambda: reptile.Reptile(model, inner_lr=0.01, inner_steps=2,
                                           inner_optimizer="adam", inner_batch_size=3,
                                           bn_mode=bn_mode),
    }
    algorithm = make[name]()
    meta = {"task": "omniglot", "ways": 5, "image_size": 28,
            "inner_steps": algorithm.eval_inner_steps}
    path = exporter.export(model, algorithm, str(tmp_path / f"{name}_{bn_mode}"), metadata=meta)
    return tf.saved_model.load(path), algorithm


# Each algorithm with each batch-norm mode it may have been trained with; by default one mode per
# algorithm (every mode and every algorithm covered), the whole grid under -m slow.
_CI_SERVING = {("maml", "transductive"), ("mamlpp", "support"), ("metasgd", "running"),
               ("anil", "transductive"), ("reptile", "support"), ("maml", "running")}


@pytest.mark.parametrize("name,bn_mode", [
    pytest.param(name, mode, marks=() if (name, mode) in _CI_SERVING else pytest.mark.slow)
    for name in ("maml", "mamlpp", "metasgd", "anil", "reptile")
    for mode in ("transductive", "support", "running")])
def test_one_query_per_call_equals_the_same_query_in_a_batch(tmp_path, name, bn_mode):
    """Serving does not depend on the other queries, whatever the model was trained with."""
    loaded, algorithm = _export_small(tmp_path, name, bn_mode)
    sx, sy, qx = _episode(7, queries=2)
    sign = loaded.signatures["adapt_and_predict"]
    together = sign(support_images=sx, support_labels=sy, query_images=qx)["logits"].numpy()
    for i in range(len(qx)):
        alone = sign(support_images=sx, support_labels=sy, query_images=qx[i:i + 1])
        np.testing.assert_allclose(alone["logits"].numpy()[0], together[i], atol=ATOL)
    # Exactly the learner's own serving-mode adaptation (learned rates, per-step BN and all).
    serving = exporter.read_metadata(  # the mode recorded with the model
        str(tmp_path / f"{name}_{bn_mode}"))["serving_bn_mode"]
    assert serving == ("running" if bn_mode == "running" else "support")
    np.testing.assert_allclose(together, _in_process(algorithm, 1 - sx, sy, 1 - qx,
                                                     algorithm.eval_inner_steps, serving),
                               atol=ATOL)


def test_batch_signature_equals_single_calls(loaded):
    tasks = [_episode(20 + i, queries=2) for i in range(4)]
    sx, sy, qx = (np.stack([t[j] for t in tasks]) for j in range(3))
    out = loaded.signatures["adapt_and_predict_batch"](
        support_images=sx, support_labels=sy, query_images=qx)
    assert out["logits"].shape == (4, 10, 5) and out["predictions"].shape == (4, 10)
    for i in range(4):
        single = loaded.signatures["adapt_and_predict"](
            support_images=sx[i], support_labels=sy[i], query_images=qx[i])
        np.testing.assert_allclose(out["logits"][i], single["logits"], atol=ATOL)
    with pytest.raises(tf.errors.InvalidArgumentError, match="same number of tasks"):
        loaded.signatures["adapt_and_predict_batch"](
            support_images=sx, support_labels=sy, query_images=qx[:3])


# --------------------------------------------------------------------------- nothing lost
def _fake_workdir(root) -> str:
    """What tfmeta.train leaves in a work directory, enough for the checks made before restoring."""
    workdir = os.path.join(str(root), "run")
    os.makedirs(os.path.join(workdir, "checkpoints"))
    for name, text in (("config.json", "{}"), ("history.jsonl", "{}\n"),
                       ("checkpoints/checkpoint", 'model_checkpoint_path: "ckpt-1"\n'),
                       ("checkpoints/ckpt-1.index", "index")):
        with open(os.path.join(workdir, name), "w") as f:
            f.write(text)
    return workdir


def _export_to(random_export, path, **kwargs):
    return exporter.export(random_export["model"], random_export["algorithm"], str(path),
                         metadata=random_export["metadata"], **kwargs)


@pytest.mark.parametrize("target", ["workdir", "other_files", "file", "empty_dir",
                                    "foreign_saved_model", "root"])
def test_export_refuses_what_it_did_not_create(random_export, tmp_path, monkeypatch, target):
    monkeypatch.chdir(tmp_path)
    workdir = _fake_workdir(tmp_path)
    path = {"workdir": workdir, "root": "/"}.get(target, str(tmp_path / "target"))
    if target == "other_files":
        os.makedirs(os.path.join(path, "notes"))
        with open(os.path.join(path, "notes", "keep.txt"), "w") as f:
            f.write("mine")
    elif target == "file":
        with open(path, "w") as f:
            f.write("mine")
    elif target == "empty_dir":
        os.makedirs(path)
    elif target == "foreign_saved_model":  # a SavedModel plus a file of the user's
        shutil.copytree(random_export["path"], path)
        with open(os.path.join(path, "README"), "w") as f:
            f.write("mine")
    before = file_tree(tmp_path)
    for replace in (False, True):
        with pytest.raises(exporter.ExportError) as info:
            _export_to(random_export, path, replace=replace)
        message = str(info.value)
        assert len(message.splitlines()) == 1 and repr(path) in message, message
        assert "choose" in message, message
        assert file_tree(tmp_path) == before, "nothing may change"
    assert sorted(os.listdir(tmp_path)) == sorted(["run", *(["target"] if target not in (
        "workdir", "root") else [])]), "no temporary may be left"


@pytest.mark.parametrize("where", ["same", "ancestor", "checkpoints"])
def test_export_from_workdir_protects_the_work_directory(tmp_path, where):
    workdir = _fake_workdir(tmp_path / "runs")
    output = {"same": workdir, "ancestor": str(tmp_path),
              "checkpoints": os.path.join(workdir, "checkpoints", "model")}[where]
    before = file_tree(tmp_path)
    # Refused before the (fake) checkpoint is read, whatever replace says.
    with pytest.raises(exporter.ExportError, match="work directory|checkpoint directory") as info:
        exporter.export_from_workdir(workdir, output, replace=True)
    assert len(str(info.value).splitlines()) == 1
    assert file_tree(tmp_path) == before


def test_export_touches_no_neighbour_and_replaces_only_when_asked(random_export, tmp_path):
    models_dir = tmp_path / "models"
    path = models_dir / "omniglot"
    # Neighbours whose names the old clean-up matched, and one that has an export temporary's
    # exact name but not its marker: all are the user's.
    for name in ("omniglot.old-v1", "omniglot.tmp-mine", "omniglot.tfmeta-tmp-0123456789ab",
                 "omniglot.tfmeta-old-0123456789ab"):
        os.makedirs(models_dir / name)
        (models_dir / name / "keep.txt").write_text(name)
    before = file_tree(models_dir)
    assert _export_to(random_export, path) == str(path)
    assert exporter.is_tfmeta_export(str(path))
    # An explicit output over a previous tfmeta export needs replace ...
    # (From Python, replace is an argument, not the binary's flag.)
    with pytest.raises(exporter.ExportError, match="already holds a tfmeta SavedModel; pass "
                                                 "replace=True") as info:
        _export_to(random_export, path)
    assert repr(str(path)) in str(info.value)
    # ... and with it, the model is replaced.
    assert "step" not in exporter.read_metadata(str(path))
    assert exporter.export(random_export["model"], random_export["algorithm"], str(path),
                         metadata=dict(random_export["metadata"], step=9),
                         replace=True) == str(path)
    assert exporter.read_metadata(str(path))["step"] == 9
    after = file_tree(models_dir)
    assert {k: v for k, v in after.items() if not k.startswith("omniglot/")} == before
    assert sorted(os.listdir(models_dir)) == sorted(["omniglot", *{k.split("/")[0]
                                                                    for k in before}])


@pytest.mark.parametrize("foreign", ["assets/notes.txt", "variables/mine/old.ckpt",
                                     "variables/variables.index.bak", "assets.extra/x.txt"])
def test_replace_refuses_an_export_holding_foreign_files_at_any_depth(random_export, tmp_path,
                                                                     foreign):
    path = tmp_path / "model"
    shutil.copytree(random_export["path"], path)
    (path / foreign).parent.mkdir(parents=True, exist_ok=True)
    (path / foreign).write_text("mine")
    # A folder of the user's is named itself.
    first = {"variables/mine/old.ckpt": "variables/mine", "assets.extra/x.txt": "assets.extra"}.get(
        foreign, foreign)
    assert not exporter.is_tfmeta_export(str(path))
    assert exporter.foreign_entry(str(path)) == first
    before = file_tree(tmp_path)
    with pytest.raises(exporter.ExportError) as info:
        _export_to(random_export, path, replace=True)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert f"output {str(path)!r} holds a SavedModel together with {first!r}" in message, message
    assert f"move {os.path.join(str(path), first)!r} out of it" in message, message
    assert "--output" not in message and "--replace" not in message, message
    assert file_tree(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["model"]


def test_a_tfmeta_export_is_exactly_what_an_export_writes(random_export, tmp_path):
    assert exporter.foreign_entry(random_export["path"]) is None
    path = tmp_path / "model"
    shutil.copytree(random_export["path"], path)
    # A folder where the export writes a file, and a symbolic link, are not the export's either.
    os.remove(path / "fingerprint.pb")
    os.mkdir(path / "fingerprint.pb")
    assert exporter.foreign_entry(str(path)) == "fingerprint.pb"
    os.rmdir(path / "fingerprint.pb")
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(path / "assets"), elsewhere)
    os.symlink(elsewhere, path / "assets")
    assert exporter.foreign_entry(str(path)) == "assets"
    assert not exporter.is_tfmeta_export(str(path))


def test_stale_clean_up_leaves_temporaries_holding_user_files(random_export, tmp_path):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    tmp = models_dir / "omniglot.tfmeta-tmp-0123456789ab"  # a killed export's name and marker
    shutil.copytree(random_export["path"], tmp)
    (tmp / ".tfmeta-export-in-progress.json").write_text('{"pid": 0, "host": "gone"}')
    (tmp / "variables" / "notes.txt").write_text("mine")
    old = models_dir / "omniglot.tfmeta-old-0123456789ab"  # a moved-aside model, plus a file
    shutil.copytree(random_export["path"], old)
    (old / "assets" / "labels.txt").write_text("mine")
    dead = models_dir / "omniglot.tfmeta-tmp-ba9876543210"  # a killed export's, nothing else
    shutil.copytree(random_export["path"], dead / "x")
    shutil.move(str(dead / "x" / "variables"), dead / "variables")
    shutil.rmtree(dead / "x")
    (dead / "variables" / "variables_temp").mkdir()
    (dead / "variables" / "variables_temp" / "part-00000-of-00001.index").write_text("")
    (dead / ".tfmeta-export-in-progress.json").write_text('{"pid": 0, "host": "gone"}')
    before = {k: v for k, v in file_tree(models_dir).items() if not k.startswith(dead.name)}
    _export_to(random_export, models_dir / "omniglot")
    after = file_tree(models_dir)
    assert {k: v for k, v in after.items() if not k.startswith("omniglot/")} == before
    assert not dead.exists(), "a killed export's own leftover is removed"


def test_the_runs_own_export_is_named_as_such_not_as_an_output_flag(tmp_path):
    workdir = _fake_workdir(tmp_path)
    os.makedirs(os.path.join(workdir, "export"))
    with open(os.path.join(workdir, "export", "notes.txt"), "w") as f:
        f.write("mine")
    before = file_tree(tmp_path)
    with pytest.raises(exporter.ExportError) as info:
        exporter.export_from_workdir(workdir)  # what tfmeta.train runs at the end
    message = str(info.value)
    export_dir = os.path.join(workdir, "export")
    assert message.startswith(f"the run's export directory {export_dir!r} is a directory "
                              "holding other files (notes.txt)"), message
    assert "--output" not in message and "choose a path" not in message, message
    assert "replace=True" not in message and "--replace" not in message, message
    # tfmeta.train checks the same before training.
    with pytest.raises(exporter.ExportError) as info:
        exporter.check_run_export(workdir)
    assert str(info.value) == message
    assert file_tree(tmp_path) == before


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_export_leaves_no_temporary(random_export, tmp_path, monkeypatch, error):
    previous = str(tmp_path / "model")
    shutil.copytree(random_export["path"], previous)
    before = file_tree(tmp_path)

    def fail_midway(module, target, signatures):
        with open(os.path.join(target, "saved_model.pb"), "wb") as f:
            f.write(b"partial")
        raise error

    monkeypatch.setattr(writer, "_write_saved_model", fail_midway)
    monkeypatch.chdir(tmp_path)
    expected = (exporter.ExportError, "No space left on device; nothing was changed") \
        if isinstance(error, OSError) else (KeyboardInterrupt, None)
    for output in (previous, str(tmp_path / "new" / "nested" / "model")):
        with pytest.raises(expected[0], match=expected[1]) as info:
            _export_to(random_export, output, replace=True)
        assert len(str(info.value).splitlines()) <= 1
        # The previous model is intact; no temporary and no created parent is left.
        assert file_tree(tmp_path) == before
        assert sorted(os.listdir(tmp_path)) == ["model"]


def test_shared_while_loop_answers_as_the_unrolled_graph(random_export):
    """The signatures run the inner loop as a while loop over a constant step count: the same
    logits as a graph unrolling the same steps (the library's int ``steps``; this one transforms
    the inputs its own way, so to float precision), and bit for bit those of ``inner_steps=3``.
    The previous release's (unrolled) export is compared bit for bit in test_previous_release.
    """
    loaded = tf.saved_model.load(random_export["path"])
    algorithm = random_export["algorithm"]
    mode = exporter.serving_bn_mode(algorithm)
    sx, sy, qx = _episode(5, ways=5)  # already 28x28: the graph only inverts

    @tf.function(autograph=False)
    def unrolled(sx, sy, qx):
        return algorithm.adapt_and_predict((1 - sx)[None], sy[None], (1 - qx)[None], steps=3,
                                           bn_mode=mode)[0]

    ours = loaded.signatures["adapt_and_predict"](support_images=sx, support_labels=sy,
                                                  query_images=qx)["logits"]
    np.testing.assert_allclose(ours, unrolled(sx, sy, qx), atol=ATOL)
    steps = loaded.signatures["adapt_and_predict_steps"](
        support_images=sx, support_labels=sy, query_images=qx, inner_steps=3)["logits"]
    np.testing.assert_array_equal(ours, steps)
