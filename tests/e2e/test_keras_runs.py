"""tfmeta.keras.MetaModel in processes of its own: mirrored replicas on logical devices and two
workers of TF_CONFIG (set before TensorFlow starts), its SavedModels read by a process that
cannot import tfmeta, and examples/keras_fit.py as docs/keras.md shows it.

MetaModel itself is tested in process in tests/unit/keras/.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tfmeta
from tests import keras_driver
from tests.helpers import ARCHIVES_ENV, REPO, subprocess_env
from tests.unit.keras.test_keras import (
    _assert_same, _episode_images, _export_like_the_trainer, _sine_stream, _trained_experiment)
from tfmeta.base import signatures
from tfmeta.keras import AlgorithmTypeError, MetaModel, export
from tfmeta.run import exporter

DRIVER = os.path.join(REPO, "tests", "keras_driver.py")
EXAMPLE = os.path.join(REPO, "examples", "keras_fit.py")
TIMEOUT = 600


def _drive(spec: dict, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, DRIVER, json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=env or subprocess_env())


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def _npz(path: str) -> list[np.ndarray]:
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split(":")[0]))]


def test_mirrored_on_two_devices_equals_one_device(tmp_path):
    """The same global batch on 1 device and on 2 mirrored replicas: the same weights (float64),
    batch-norm statistics (MAML) and Reptile's carried Adam state included."""
    spec = {"strategies": ["default", "mirrored"], "logical_cpus": 2, "float64": True,
            "algorithms": ["maml", "reptile_mlp"], "steps": 3, "dump": str(tmp_path / "w")}
    report = _finish(_drive(spec))
    assert report["replicas"] == {"default": 1, "mirrored": 2}
    for algorithm in spec["algorithms"]:
        dump = f"{spec['dump']}.{algorithm}"
        single, mirrored = _npz(dump + ".default.npz"), _npz(dump + ".mirrored.npz")
        _assert_same(mirrored, single)
        assert int(single[-1]) == 3  # the meta-iteration counter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_multiworker_two_local_workers_equal_one_device(tmp_path, float64):
    """Two worker processes (TF_CONFIG on localhost) train in lockstep: identical weights on both,
    equal to one device on the same global batches."""
    workers = [f"localhost:{_free_port()}" for _ in range(2)]
    spec = {"strategies": ["multiworker"], "float64": True, "steps": 3}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers},
                                "task": {"type": "worker", "index": index}})
        procs.append(_drive(dict(spec, dump=str(tmp_path / f"worker{index}")),
                            env=subprocess_env(TF_CONFIG=tf_config)))
    reports = [_finish(p) for p in procs]
    assert [r["replicas"] for r in reports] == [{"multiworker": 2}] * 2
    w0 = _npz(str(tmp_path / "worker0.maml.multiworker.npz"))
    w1 = _npz(str(tmp_path / "worker1.maml.multiworker.npz"))
    _assert_same(w0, w1, rtol=0, atol=0)
    _assert_same(w0, list(keras_driver.run(spec).values()))


_NO_TFMETA_CHILD = textwrap.dedent("""
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "tfmeta" or name.startswith("tfmeta."):
                raise ImportError("tfmeta must not be imported")
    sys.meta_path.insert(0, _Block())
    import json
    import numpy as np, tensorflow as tf
    path, inputs, output, outputs = sys.argv[1:5]
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["adapt_and_predict"](**dict(np.load(inputs)))
    np.save(outputs, out[output].numpy())
    print(loaded.signatures["metadata"]()["json"].numpy().decode().replace("\\n", " "))
""")


def _adapt_without_tfmeta(tmp_path, path: str, inputs: dict, output: str) -> np.ndarray:
    """``adapt_and_predict`` of the SavedModel at ``path`` in a process that cannot import
    tfmeta (inputs by signature name); returns the ``output`` array; checks the metadata."""
    np.savez(tmp_path / "in.npz", **inputs)
    (tmp_path / "child.py").write_text(_NO_TFMETA_CHILD)
    env = subprocess_env()
    env["PYTHONPATH"] = ""  # not even the repository on the path
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py"), path,
                           str(tmp_path / "in.npz"), output, str(tmp_path / "out.npy")],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == exporter.read_metadata(path)
    return np.load(tmp_path / "out.npy")


@pytest.mark.slow
def test_fit_trained_classifier_exports_and_adapts_without_tfmeta(tmp_path):
    """The SavedModel of a model trained with fit: the trainer's metadata for the same run, and
    it adapts in a process that cannot import tfmeta, as tfmeta does in process."""
    exp, meta = _trained_experiment()
    path = _export_like_the_trainer(meta, exp.config, str(tmp_path / "keras"))
    ours = exporter.read_metadata(path)
    theirs = exporter.metadata_from_config(exp.config, step=2, classification=True)
    assert ours["step"] == 2 and ours["trained_with"] == "keras_fit"
    for key in set(theirs) - {"exported_at"}:
        assert ours[key] == theirs[key], key
    assert ours["signatures"] == [signatures.ADAPT, signatures.ADAPT_STEPS,
                                  signatures.ADAPT_BATCH, signatures.TRANSDUCTIVE,
                                  signatures.PREDICT, signatures.METADATA]
    with pytest.raises(AlgorithmTypeError):
        export(exp.model, str(tmp_path / "x"))

    sx, sy, qx = _episode_images()
    got = _adapt_without_tfmeta(tmp_path, path, {"support_images": sx, "support_labels": sy,
                                                 "query_images": qx}, "logits")
    # The graph inverts decode_png/255 images (strokes bright), then adapts as tfmeta does
    # (queries normalised with the support set's statistics: the serving mode).
    want = exp.algorithm.adapt_and_predict((1 - sx)[None], sy[None], (1 - qx)[None],
                                           bn_mode="support")[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_fit_trained_model_exports_and_adapts_without_tfmeta(tmp_path):
    """A sinusoid regressor trained with fit: the trainer's metadata for the same settings, and
    the SavedModel adapts in a process that cannot import tfmeta, as tfmeta does in process."""
    from tests.distributed_driver import load_config

    config = load_config(os.path.join(REPO, "configs", "sinusoid_maml.py") + ":smoke")
    algo = tfmeta.MAML(tfmeta.sinusoid_mlp(hidden=(8,), seed=0), inner_lr=config.inner.lr,
                       inner_steps=config.inner.steps, eval_inner_steps=config.inner.eval_steps,
                       loss="mse")
    meta = MetaModel(algo)
    meta.compile()
    meta.fit(_sine_stream(), epochs=1, steps_per_epoch=2, verbose=0)
    path = meta.export(str(tmp_path / "export"), k_support=config.data.k_support,
                       k_query=config.data.k_query)
    ours = exporter.read_metadata(path)
    theirs = exporter.metadata_from_config(config, step=2, classification=False)
    assert ours["step"] == 2 and ours["trained_with"] == "keras_fit"
    for key in set(theirs) - {"exported_at"}:
        assert ours[key] == theirs[key], key
    with pytest.raises(AlgorithmTypeError):
        export(algo.model, str(tmp_path / "x"))

    rng = np.random.default_rng(3)
    sx, qx = (rng.uniform(-5, 5, (n, 1)).astype(np.float32) for n in (5, 7))
    sy = np.sin(sx).astype(np.float32)
    got = _adapt_without_tfmeta(tmp_path, path, {"support_x": sx, "support_y": sy,
                                                 "query_x": qx}, "predictions")
    want = algo.adapt_and_predict(sx[None], sy[None], qx[None])[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_example_script_runs_on_the_smoke_data(tmp_path, omniglot_archives_dir, tfds_data_dir,
                                               omniglot_small):
    """examples/keras_fit.py, as docs/keras.md shows it, on the small archives."""
    with open(os.path.join(REPO, "docs", "keras.md"), encoding="utf-8") as f:
        docs = f.read()
    with open(EXAMPLE, encoding="utf-8") as f:
        script = f.read()
    assert script.strip() in docs, "docs/keras.md must show examples/keras_fit.py as it is"
    workdir = tmp_path / "run"
    env = subprocess_env(**{ARCHIVES_ENV: omniglot_archives_dir, "TFDS_DATA_DIR": tfds_data_dir})
    proc = subprocess.run([sys.executable, EXAMPLE, str(workdir), "--smoke"], cwd=str(tmp_path),
                          env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"loss", "accuracy", "accuracy_pre"} <= set(result) and 0 <= result["accuracy"] <= 1
    assert exporter.is_tfmeta_export(str(workdir / "export"))
    assert glob.glob(str(workdir / "logs" / "train" / "events.out.tfevents.*"))
