"""Meta-training throughput of MAML on the conv4 Omniglot network, synthetic 28x28 episodes.

    python benchmarks/train_throughput.py [--seconds 20] [--workloads a,b,c,d]

Prints one JSON line per (workload, mode) with ``tasks_per_second`` and
``seconds_per_iteration``. Workloads (as in the learn2learn comparison):

  a  5-way 1-shot, 1 query per class, meta-batch 32, 1 inner step, second order
  b  as (a) with 15 queries per class
  c  20-way 1-shot, 1 query per class, meta-batch 16, 5 inner steps, second order
  d  as (b), first order

Each workload runs the same meta-iteration (meta-gradients + Adam update, ``steps_per_loop``
iterations inside one tf.function, as the trainer does) in two modes measured in the same run:
``graph`` (tf.function) is the baseline, ``xla`` compiles the meta-gradient computation with XLA
(``--config.train.jit_compile=true`` in the trainer). The input pipeline is excluded: every
iteration reuses one synthetic batch, so the figure is the compute of the step alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfmeta import models  # noqa: E402
from tfmeta.maml import MAML  # noqa: E402

WORKLOADS = {
    "a": dict(ways=5, shots=1, queries=1, meta_batch=32, inner_steps=1, first_order=False),
    "b": dict(ways=5, shots=1, queries=15, meta_batch=32, inner_steps=1, first_order=False),
    "c": dict(ways=20, shots=1, queries=1, meta_batch=16, inner_steps=5, first_order=False),
    "d": dict(ways=5, shots=1, queries=15, meta_batch=32, inner_steps=1, first_order=True),
}


def _batch(ways: int, shots: int, queries: int, meta_batch: int) -> dict[str, tf.Tensor]:
    rng = tf.random.Generator.from_seed(0)
    labels = lambda n: tf.tile(tf.range(ways, dtype=tf.int32)[None, :, None], [meta_batch, 1, n])  # noqa: E731
    return {
        "support_x": rng.uniform([meta_batch, ways * shots, 28, 28, 1]),
        "support_y": tf.reshape(labels(shots), [meta_batch, ways * shots]),
        "query_x": rng.uniform([meta_batch, ways * queries, 28, 28, 1]),
        "query_y": tf.reshape(labels(queries), [meta_batch, ways * queries]),
    }


def measure(workload: str, mode: str, seconds: float, steps_per_loop: int) -> dict:
    """Runs one workload in one mode for about ``seconds`` after warm-up."""
    w = WORKLOADS[workload]
    model = models.omniglot_conv4(w["ways"], seed=0)
    inner_lr = 0.4 if w["ways"] == 5 else 0.1
    maml = MAML(model, inner_lr=inner_lr, inner_steps=w["inner_steps"],
                first_order=w["first_order"])
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    batch = _batch(w["ways"], w["shots"], w["queries"], w["meta_batch"])

    def grads_fn(b):
        step = maml.meta_step(b, global_batch_size=w["meta_batch"])
        return step.grads, step.metrics["loss"]

    if mode == "xla":
        grads_fn = tf.function(grads_fn, jit_compile=True)

    @tf.function
    def loop(n):
        loss = tf.constant(0.0)
        for _ in tf.range(n):
            grads, loss = grads_fn(batch)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    t0 = time.perf_counter()
    float(loop(tf.constant(1)))  # trace and compile
    compile_s = time.perf_counter() - t0
    float(loop(tf.constant(steps_per_loop)))  # warm-up
    iterations, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        float(loop(tf.constant(steps_per_loop)))
        iterations += steps_per_loop
    elapsed = time.perf_counter() - start
    return {
        "benchmark": "train_throughput", "workload": workload, "mode": mode, **w,
        "tasks_per_second": round(iterations * w["meta_batch"] / elapsed, 2),
        "seconds_per_iteration": round(elapsed / iterations, 4),
        "iterations": iterations, "compile_seconds": round(compile_s, 1),
        "tensorflow": tf.__version__, "cpus": os.cpu_count(), "machine": platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per run")
    parser.add_argument("--steps_per_loop", type=int, default=5)
    parser.add_argument("--workloads", default="a,b,c,d")
    parser.add_argument("--modes", default="graph,xla")
    args = parser.parse_args()
    for workload in args.workloads.split(","):
        for mode in args.modes.split(","):
            print(json.dumps(measure(workload, mode, args.seconds, args.steps_per_loop)),
                  flush=True)


if __name__ == "__main__":
    main()
