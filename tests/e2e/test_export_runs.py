"""Fast-adaptation SavedModels outside the exporting process: loaded by a process that cannot
import tfmeta (grey and colour models), run by saved_model_cli and tfmeta.adapt, and written by
the tfmeta.export binary.

The exports themselves (answers, bad input, nothing lost) are tested in process in
tests/unit/serving/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import file_tree, subprocess_env
from tests.unit.serving.test_export import (
    _NO_TFMETA, ATOL, _episode, _export_small, _fake_workdir, _in_process)
from tests.unit.serving.test_export_colour import (  # noqa: F401 (colour_export is a fixture)
    TRANSFORM, WAYS, _write_folders, colour_export)
from tests.unit.serving.test_export_colour import _in_process as _colour_in_process
from tfmeta.run import exporter
from tfmeta.serving import serving_client

SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


_CHILD = _NO_TFMETA + textwrap.dedent("""
    import json
    sys.modules.pop("tfmeta", None)
    import numpy as np, tensorflow as tf
    path, inputs, outputs = sys.argv[1:4]
    loaded = tf.saved_model.load(path)
    data = dict(np.load(inputs))
    out = {}
    for tag in ("28", "105"):
        kw = dict(support_images=data["sx" + tag], support_labels=data["sy"],
                  query_images=data["qx" + tag])
        out["logits" + tag] = loaded.signatures["adapt_and_predict"](**kw)["logits"].numpy()
        r = loaded.signatures["adapt_and_predict"](**kw)
        out["probabilities" + tag] = r["probabilities"].numpy()
        out["predictions" + tag] = r["predictions"].numpy()
    kw = dict(support_images=data["sx28"], support_labels=data["sy"], query_images=data["qx28"])
    for k in (0, 3, 5):
        out[f"steps{k}"] = loaded.signatures["adapt_and_predict_steps"](
            **kw, inner_steps=tf.constant(k))["logits"].numpy()
    out["transductive"] = loaded.signatures["adapt_and_predict_transductive"](**kw)[
        "logits"].numpy()
    out["predict"] = loaded.signatures["predict"](query_images=data["qx28"])["logits"].numpy()
    np.savez(outputs, **out)
    meta = json.loads(loaded.signatures["metadata"]()["json"].numpy())
    asset = open(loaded.metadata_file.asset_path.numpy().decode()).read()
    print(json.dumps({"meta": meta, "asset": json.loads(asset),
                      "tfmeta_imported": "tfmeta" in sys.modules and sys.modules["tfmeta"] is not None}))
""")


def test_loads_without_tfmeta_and_matches_in_process(random_export, tmp_path):
    path, algorithm = random_export["path"], random_export["algorithm"]
    assert os.listdir(os.path.join(path, "variables")), "variables must be saved"
    assert os.path.getsize(os.path.join(path, "variables", "variables.data-00000-of-00001")) > 1000
    sx, sy, qx = _episode(0)
    sx105, _, qx105 = _episode(1, size=105)
    np.savez(tmp_path / "in.npz", sx28=sx, sy=sy, qx28=qx, sx105=sx105, qx105=qx105)
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = subprocess_env()
    env["PYTHONPATH"] = ""  # Not even the repository on the path.
    proc = subprocess.run([sys.executable, str(script), path, str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["tfmeta_imported"]
    assert report["meta"] == report["asset"]
    assert report["meta"].items() >= random_export["metadata"].items()
    assert report["meta"]["serving_bn_mode"] == "support"
    assert report["meta"]["transductive_signature"] == "adapt_and_predict_transductive"
    out = np.load(tmp_path / "out.npz")

    # 28x28: resizing is the identity; the graph only inverts.
    ref = _in_process(algorithm, 1 - sx, sy, 1 - qx, steps=3)
    np.testing.assert_allclose(out["logits28"], ref, atol=ATOL)
    np.testing.assert_allclose(out["probabilities28"], tf.nn.softmax(ref).numpy(), atol=ATOL)
    np.testing.assert_array_equal(out["predictions28"], ref.argmax(-1))
    np.testing.assert_allclose(out["steps3"], ref, atol=ATOL)
    np.testing.assert_allclose(out["steps5"], _in_process(algorithm, 1 - sx, sy, 1 - qx, 5),
                               atol=ATOL)
    np.testing.assert_allclose(out["transductive"],
                               _in_process(algorithm, 1 - sx, sy, 1 - qx, 3, "transductive"),
                               atol=ATOL)
    assert not np.allclose(out["transductive"], out["logits28"], atol=1e-3)
    # Zero steps: the initialisation, queries normalised with the support set's statistics.
    np.testing.assert_allclose(out["steps0"], _in_process(algorithm, 1 - sx, sy, 1 - qx, 0),
                               atol=ATOL)
    # predict: the initialisation with the trained moving statistics.
    theta = [v.numpy() for v in algorithm.model.trainable_variables]
    unadapted = algorithm.predict(theta, 1 - qx, bn_mode="running", steps=0).numpy()
    np.testing.assert_allclose(out["predict"], unadapted, atol=ATOL)
    assert not np.allclose(out["steps0"], out["steps3"], atol=1e-3), "adaptation changed nothing"

    # 105x105: the same graph preprocessing, run in process, gives the same logits.
    pre_s = exporter.preprocess_images(tf.constant(sx105), 28)
    pre_q = exporter.preprocess_images(tf.constant(qx105), 28)
    np.testing.assert_allclose(out["logits105"], _in_process(algorithm, pre_s, sy, pre_q, 3),
                               atol=ATOL)


def test_saved_model_cli_show_and_run(random_export, tmp_path):
    path = random_export["path"]
    show = subprocess.run([SAVED_MODEL_CLI, "show", "--all", "--dir", path], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert show.returncode == 0, show.stderr[-2000:]
    for name in ("adapt_and_predict", "adapt_and_predict_steps", "adapt_and_predict_batch",
                 "adapt_and_predict_transductive", "predict", "metadata",
                 "support_images", "support_labels", "query_images", "probabilities"):
        assert name in show.stdout
    sx, sy, qx = _episode(2)
    npz = tmp_path / "episode.npz"
    np.savez(npz, support_images=sx, support_labels=sy, query_images=qx)
    outdir = tmp_path / "out"
    run = subprocess.run(
        [SAVED_MODEL_CLI, "run", "--dir", path, "--tag_set", "serve",
         "--signature_def", "adapt_and_predict", "--inputs",
         f"support_images={npz}[support_images];support_labels={npz}[support_labels];"
         f"query_images={npz}[query_images]", "--outdir", str(outdir)],
        env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ref = _in_process(random_export["algorithm"], 1 - sx, sy, 1 - qx, 3)
    np.testing.assert_allclose(np.load(outdir / "logits.npy"), ref, atol=ATOL)
    np.testing.assert_array_equal(np.load(outdir / "predictions.npy"), ref.argmax(-1))


def test_export_binary_on_trained_run(smoke_workdir, tmp_path):
    # tfmeta.train already exported at the end of training.
    trained = exporter.read_metadata(os.path.join(smoke_workdir, "export"))
    assert trained["step"] == 200 and trained["algorithm"] == "maml" and trained["ways"] == 5
    output = str(tmp_path / "again")
    proc = subprocess.run([sys.executable, "-m", "tfmeta.export", f"--workdir={smoke_workdir}",
                           f"--output={output}"], env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = exporter.read_metadata(output)
    for key in ("algorithm", "ways", "shots", "queries", "image_size", "inner_steps", "inner_lr",
                "bn_mode", "step", "tfmeta_version", "tensorflow_version"):
        assert meta[key] == trained[key], key
    assert meta["inner_steps"] == 3 and meta["inner_lr"] == 0.4
    # tfmeta.train exports the experiment it trained, in memory; the binary restores the
    # checkpoint: the same model either way, every field but the time and every answer.
    assert {**meta, "exported_at": None} == {**trained, "exported_at": None}
    ours = tf.saved_model.load(os.path.join(smoke_workdir, "export"))
    again = tf.saved_model.load(output)
    assert sorted(ours.signatures) == sorted(again.signatures)
    sx, sy, qx = _episode(3, ways=5)
    for name in ("adapt_and_predict", "adapt_and_predict_transductive"):
        if name not in ours.signatures:
            continue
        a = ours.signatures[name](support_images=sx, support_labels=sy, query_images=qx)
        b = again.signatures[name](support_images=sx, support_labels=sy, query_images=qx)
        np.testing.assert_array_equal(a["logits"], b["logits"])
    np.testing.assert_array_equal(ours.signatures["predict"](query_images=qx)["logits"],
                                  again.signatures["predict"](query_images=qx)["logits"])


def test_export_binary_missing_workdir(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tfmeta.export",
                           f"--workdir={tmp_path / 'nothing'}"], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "nothing" in proc.stderr


_CHILD_MINIMAL = _NO_TFMETA + textwrap.dedent("""
    import numpy as np, tensorflow as tf
    path, inputs, outputs = sys.argv[1:4]
    data = dict(np.load(inputs))
    sign = tf.saved_model.load(path).signatures["adapt_and_predict"]
    out = sign(support_images=data["sx"], support_labels=data["sy"], query_images=data["qx"])
    np.save(outputs, out["logits"].numpy())
""")


@pytest.mark.parametrize("name", ["mamlpp", pytest.param("metasgd", marks=pytest.mark.slow)])
def test_learned_rates_and_per_step_bn_export_loads_without_tfmeta(tmp_path, name):
    """The inner loop's own variables travel with the SavedModel."""
    loaded, algorithm = _export_small(tmp_path, name, "support")
    for var in algorithm.inner.variables.trainable:  # not their initial values any more
        var.assign(var * 1.3)
    meta = {"task": "omniglot", "ways": 5, "image_size": 28,
            "inner_steps": algorithm.eval_inner_steps}
    path = exporter.export(algorithm.model, algorithm, str(tmp_path / "scaled"), metadata=meta)
    sx, sy, qx = _episode(11, queries=2)
    np.savez(tmp_path / "in.npz", sx=sx, sy=sy, qx=qx)
    (tmp_path / "child.py").write_text(_CHILD_MINIMAL)
    env = subprocess_env()
    env["PYTHONPATH"] = ""
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py"), path,
                           str(tmp_path / "in.npz"), str(tmp_path / "out.npy")],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = _in_process(algorithm, 1 - sx, sy, 1 - qx, algorithm.eval_inner_steps)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, atol=ATOL)
    before = loaded.signatures["adapt_and_predict"](support_images=sx, support_labels=sy,
                                                    query_images=qx)["logits"].numpy()
    assert not np.allclose(before, want, atol=1e-4), "the scaled variables must matter"


def test_export_binary_refusals_are_one_line(tmp_path, random_export):
    """The exit status and the single line, through the binary (all refused before restoring)."""
    workdir = _fake_workdir(tmp_path)
    taken = tmp_path / "taken"
    shutil.copytree(random_export["path"], taken)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = file_tree(tmp_path)
    cases = {"workdir": (workdir, "is the work directory"), "root": ("/", "root"),
             "taken": (str(taken), "pass --replace")}
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "tfmeta.export", f"--workdir={workdir}", f"--output={output}"],
        cwd=str(cwd), env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for name, (output, _) in cases.items()}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, stderr[-2000:])
        lines = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and cases[name][1] in lines[0], (name, stderr[-2000:])
        assert "Traceback" not in stderr
    assert file_tree(tmp_path) == before
    assert os.listdir(cwd) == []


def test_export_binary_replaces_the_runs_own_export(smoke_workdir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(smoke_workdir, workdir)
    os.utime(os.path.join(workdir, "export", "saved_model.pb"), (0, 0))
    before = {k: v for k, v in file_tree(workdir).items() if not k.startswith("export/")}
    proc = subprocess.run([sys.executable, "-m", "tfmeta.export", f"--workdir={workdir}"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.stat(os.path.join(workdir, "export", "saved_model.pb")).st_mtime > 0
    assert exporter.is_tfmeta_export(os.path.join(workdir, "export"))
    assert {k: v for k, v in file_tree(workdir).items() if not k.startswith("export/")} == before
    assert sorted(os.listdir(tmp_path)) == ["run"]


# --------------------------------------------------------------------------- colour exports
_COLOUR_CHILD = _NO_TFMETA + """
import json
import os

import numpy as np
import tensorflow as tf

path, support, query, output = sys.argv[1:5]
loaded = tf.saved_model.load(path)
meta = json.loads(loaded.signatures["metadata"]()["json"].numpy())
read = lambda f: tf.image.decode_png(tf.io.read_file(f), channels=meta["channels"]) / 255
classes = sorted(os.listdir(support))
sx = np.stack([read(os.path.join(support, c, "0.png")) for c in classes]).astype("float32")
queries = sorted(os.listdir(query))
qx = np.stack([read(os.path.join(query, q)) for q in queries]).astype("float32")
out = loaded.signatures["adapt_and_predict"](
    support_images=sx, support_labels=np.arange(len(classes), dtype="int32"), query_images=qx)
np.savez(output, logits=out["logits"].numpy(), sx=sx, qx=qx)
print(json.dumps({"channels": meta["channels"], "tfmeta": "tfmeta" in sys.modules}))
"""


def test_a_folder_of_rgb_pngs_adapts_without_tfmeta(colour_export, tmp_path):
    support, query, _ = _write_folders(tmp_path / "rgb", channels=3)
    (tmp_path / "child.py").write_text(_COLOUR_CHILD)
    env = subprocess_env()
    env["PYTHONPATH"] = ""  # not even the repository on the path
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py"), colour_export["path"],
                           support, query, str(tmp_path / "out.npz")], cwd=str(tmp_path),
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"channels": 3, "tfmeta": False}
    out = np.load(tmp_path / "out.npz")
    assert out["sx"].shape == (WAYS, 19, 26, 3)
    pre = lambda x: exporter.preprocess_images(tf.constant(x), TRANSFORM)  # noqa: E731
    want = _colour_in_process(colour_export["algorithm"], pre(out["sx"]), np.arange(WAYS),
                              pre(out["qx"]))
    np.testing.assert_allclose(out["logits"], want, atol=ATOL)
    # tfmeta's client reads the same folders with PIL (resized before the graph): the same
    # model inputs within one level, so nearly the same answers.
    _, preds = serving_client.classify(colour_export["loaded"], support, [query])
    probabilities = tf.nn.softmax(out["logits"]).numpy()
    for p, row in zip(preds, probabilities):
        np.testing.assert_allclose([p.probabilities[f"class_{c}"] for c in range(WAYS)], row,
                                   atol=0.02)


@pytest.mark.slow
def test_the_adapt_binary_adapts_a_colour_model_to_grey_pngs(colour_export, tmp_path):
    support, query, _ = _write_folders(tmp_path / "grey", channels=1)
    proc = subprocess.run(
        [sys.executable, "-m", "tfmeta.adapt", f"--saved_model={colour_export['path']}",
         f"--support={support}", f"--query={query}", "--json"],
        env=subprocess_env(TF_ENABLE_ONEDNN_OPTS="0"), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)["predictions"]
    _, preds = serving_client.classify(colour_export["loaded"], support, [query])
    assert [(p["file"], p["label"]) for p in got] == [(p.file, p.label) for p in preds]
    for a, b in zip(got, preds):
        for name, value in b.probabilities.items():
            assert abs(a["probabilities"][name] - value) < 1e-5
