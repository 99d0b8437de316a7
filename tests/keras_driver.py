"""Runs ``MetaModel.fit`` in a fresh process, for tests that need process-level TF settings.

    python tests/keras_driver.py SPEC_JSON

SPEC_JSON: {"strategies": ["default", "mirrored"] | ["multiworker"], "logical_cpus": 2,
            "float64": true, "algorithms": ["maml", "reptile", "reptile_mlp"], "steps": 4,
            "dump": "out"}

Logical CPU devices and ``TF_CONFIG`` must be set before TensorFlow initialises, which is why this
runs as its own process. For each strategy and algorithm, a tiny conv4 MetaModel is built inside
the strategy's scope and fitted on the same deterministic episodes (a global batch of 4 tasks per
step), and its weights are written to ``DUMP.<algorithm>.<strategy>.npz``. :func:`run` is also
imported by the tests to compute the one-device reference in their own process.
"""

from __future__ import annotations

import json
import sys

import numpy as np

TASKS, WAYS, SHOTS, QUERIES, SIZE = 4, 3, 2, 2, 12


def episodes(batches: int, *, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """``batches`` batches of TASKS random 3-way image episodes, stacked on a leading axis."""
    rng = np.random.default_rng(seed)

    def images(per_class: int) -> np.ndarray:
        return rng.uniform(size=(batches, TASKS, WAYS * per_class, SIZE, SIZE, 1)).astype(dtype)

    def labels(per_class: int) -> np.ndarray:
        row = np.repeat(np.arange(WAYS, dtype=np.int32), per_class)
        return np.broadcast_to(row, (batches, TASKS, WAYS * per_class)).copy()

    return {"support_x": images(SHOTS), "support_y": labels(SHOTS),
            "query_x": images(QUERIES), "query_y": labels(QUERIES)}


def build(algorithm: str, strategy=None):
    """A tiny conv4 MetaModel (under ``strategy.scope()`` when given), compiled with SGD."""
    import contextlib

    import keras

    import tfmeta
    from tfmeta.keras import MetaModel

    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        if algorithm == "reptile_mlp":  # the carried Adam state on a model without batch norm
            model = tfmeta.sinusoid_mlp(hidden=(8,), seed=0)
            algo = tfmeta.Reptile(model, inner_lr=0.01, inner_steps=3, inner_optimizer="adam",
                                  inner_batch_size=4, carry_optimizer_state=True,
                                  outer_step_size=0.5, loss="mse")
            meta = MetaModel(algo)
            meta.compile()
            return meta
        model = tfmeta.omniglot_conv4(WAYS, image_size=SIZE, filters=4, seed=0)
        if algorithm == "reptile":
            algo = tfmeta.Reptile(model, inner_lr=0.05, inner_steps=3, inner_optimizer="adam",
                                  inner_batch_size=4, carry_optimizer_state=True,
                                  outer_step_size=0.5)
        else:
            algo = tfmeta.MAML(model, inner_lr=0.4, inner_steps=1, eval_inner_steps=2)
        meta = MetaModel(algo)
        meta.compile(optimizer=keras.optimizers.SGD(0.1) if algorithm != "reptile" else None)
    return meta


def run(spec: dict, strategy=None) -> dict[str, np.ndarray]:
    """Fits ``spec["steps"]`` steps; returns the weights by position."""
    import tensorflow as tf

    dtype = "float64" if spec.get("float64") else "float32"
    if spec.get("algorithm") == "reptile_mlp":
        from tfmeta.data import sinusoid

        dataset = sinusoid.task_dataset(k_support=6, k_query=4, seed=0, batch_size=TASKS).map(
            lambda b: {k: tf.cast(b[k], dtype) for k in ("support_x", "support_y", "query_x",
                                                         "query_y")})
    else:
        dataset = tf.data.Dataset.from_tensor_slices(episodes(spec["steps"], dtype=dtype))
    meta = build(spec.get("algorithm", "maml"), strategy)
    meta.fit(dataset, epochs=1, steps_per_epoch=spec["steps"], verbose=0)
    return {f"{i}:{w.name}": np.asarray(w.numpy()) for i, w in enumerate(meta.weights)}


def main() -> None:
    spec = json.loads(sys.argv[1])
    import keras
    import tensorflow as tf

    if spec.get("logical_cpus", 1) > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * spec["logical_cpus"])
    if spec.get("float64"):
        keras.config.set_floatx("float64")
        keras.config.set_dtype_policy("float64")
    from tfmeta.base import distribute

    replicas = {}
    for name in spec["strategies"]:
        strategy = distribute.make_strategy(name)
        replicas[name] = strategy.num_replicas_in_sync
        for algorithm in spec.get("algorithms", ["maml"]):
            weights = run(dict(spec, algorithm=algorithm),
                          None if name == "default" else strategy)
            np.savez(f"{spec['dump']}.{algorithm}.{name}.npz", **weights)
    print(json.dumps({"replicas": replicas}))


if __name__ == "__main__":
    main()
