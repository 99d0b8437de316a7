r"""Latency of ``adapt_and_predict`` in a loaded fast-adaptation SavedModel, on CPU.

    python benchmarks/adapt_latency.py [--calls=200] [--warmup=10] [--saved_model=PATH]

Without ``--saved_model`` it exports randomly initialised 64-filter conv4 MAML models with the
paper's evaluation settings (5-way 1-shot: inner lr 0.4, 3 steps; 20-way 1-shot: lr 0.1, 5 steps;
one query per class) and measures, per workload, in one process:

* ``adapt_and_predict`` with 28x28 inputs (resize is the identity) and with 105x105 inputs (the
  graph resizes, as for raw Omniglot PNGs);
* baselines: the ``predict`` signature (no adaptation) and tfmeta's in-process ``adapt`` +
  ``predict`` under ``tf.function`` (what evaluation inside training costs).

Prints one JSON line per (workload, method): p50 / p99 / mean milliseconds over ``--calls`` calls
after ``--warmup`` calls. Latency does not depend on the weights' values, so random weights
measure the same graph a trained model has.

Serving many tasks: ``adapt_and_predict_batch`` with B = 1, 8, 64 tasks in one call against the
baseline of B ``adapt_and_predict`` calls one after another, both in tasks/s (``--batches``).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

_CALLS = flags.DEFINE_integer("calls", 200, "Timed calls per measurement.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 10, "Untimed calls before timing.", lower_bound=1)
_SAVED_MODEL = flags.DEFINE_string(
    "saved_model", None, "Measure this export (1-shot, its N ways) instead of random models.")
_FILTERS = flags.DEFINE_integer("filters", 64, "conv4 filters of the random models.")
_BATCHES = flags.DEFINE_list("batches", ["1", "8", "64"], "Task counts B for the batch signature.")
_BATCH_SECONDS = flags.DEFINE_float("batch_seconds", 5.0, "Timed seconds per batch measurement.")

# name: (ways, inner_lr, eval inner steps), MAML paper settings.
_WORKLOADS = {"5way1shot": (5, 0.4, 3), "20way1shot": (20, 0.1, 5)}


def _time(fn, calls: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times = np.asarray(times)
    return {"p50_ms": round(float(np.percentile(times, 50)), 3),
            "p99_ms": round(float(np.percentile(times, 99)), 3),
            "mean_ms": round(float(times.mean()), 3), "calls": calls, "warmup": warmup}


def _episode(ways: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sx = tf.constant(rng.uniform(size=(ways, size, size, 1)).astype(np.float32))
    qx = tf.constant(rng.uniform(size=(ways, size, size, 1)).astype(np.float32))
    sy = tf.constant(np.arange(ways, dtype=np.int32))
    return sx, sy, qx


def _tasks_per_second(fn, tasks: int, seconds: float) -> float:
    fn()  # warm-up (and tracing)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        done += tasks
    return done / (time.perf_counter() - start)


def _measure_batches(loaded, workload: str, ways: int, common: dict) -> None:
    """B tasks in one ``adapt_and_predict_batch`` call vs B single calls, in tasks/s."""
    batch_fn = loaded.signatures["adapt_and_predict_batch"]
    single_fn = loaded.signatures["adapt_and_predict"]
    for b in (int(x) for x in _BATCHES.value):
        tasks = [_episode(ways, 28, seed=i) for i in range(b)]
        sx, sy, qx = (tf.stack([t[j] for t in tasks]) for j in range(3))
        batched = _tasks_per_second(
            lambda: batch_fn(support_images=sx, support_labels=sy, query_images=qx), b,
            _BATCH_SECONDS.value)
        single = _tasks_per_second(
            lambda: [single_fn(support_images=t[0], support_labels=t[1], query_images=t[2])
                     for t in tasks], b, _BATCH_SECONDS.value)
        print(json.dumps({"workload": workload, "method": "saved_model.adapt_and_predict_batch",
                          "tasks_per_call": b, "tasks_per_second": round(batched, 1),
                          "baseline_single_calls_tasks_per_second": round(single, 1),
                          "speedup": round(batched / single, 2), **common}), flush=True)


def _measure_saved_model(path: str, workload: str, ways: int, steps: int, common: dict) -> None:
    loaded = tf.saved_model.load(path)
    adapt_fn = loaded.signatures["adapt_and_predict"]
    predict_fn = loaded.signatures["predict"]
    for size in (28, 105):
        sx, sy, qx = _episode(ways, size)
        result = _time(lambda: adapt_fn(support_images=sx, support_labels=sy, query_images=qx),
                       _CALLS.value, _WARMUP.value)
        print(json.dumps({"workload": workload, "method": "saved_model.adapt_and_predict",
                          "input_size": size, "inner_steps": steps, **result, **common}),
              flush=True)
    sx, sy, qx = _episode(ways, 28)
    result = _time(lambda: predict_fn(query_images=qx), _CALLS.value, _WARMUP.value)
    print(json.dumps({"workload": workload, "method": "saved_model.predict (no adaptation)",
                      "input_size": 28, "inner_steps": 0, **result, **common}), flush=True)
    _measure_batches(loaded, workload, ways, common)


def main(argv: list[str]) -> None:
    del argv
    from tfmeta.run import exporter
    from tfmeta.core import models
    from tfmeta.core.maml import MAML

    common = {"device": "cpu", "tensorflow": tf.__version__, "machine": platform.machine(),
              "cpus": os.cpu_count(), "intra_op_threads":
                  tf.config.threading.get_intra_op_parallelism_threads()}
    if _SAVED_MODEL.value:
        meta = exporter.read_metadata(_SAVED_MODEL.value)
        _measure_saved_model(_SAVED_MODEL.value, f"{meta['ways']}way1shot", meta["ways"],
                             meta["inner_steps"], common)
        return
    with tempfile.TemporaryDirectory() as scratch:
        for workload, (ways, lr, steps) in _WORKLOADS.items():
            model = models.omniglot_conv4(ways, filters=_FILTERS.value, seed=0)
            algorithm = MAML(model, inner_lr=lr, inner_steps=1, eval_inner_steps=steps)
            path = exporter.export(model, algorithm, os.path.join(scratch, workload), metadata={
                "task": "omniglot", "ways": ways, "image_size": 28, "inner_steps": steps,
                "inner_lr": lr})
            _measure_saved_model(path, workload, ways, steps,
                                 dict(common, filters=_FILTERS.value))

            @tf.function
            def in_process(sx, sy, qx):
                return algorithm.adapt_and_predict(  # pylint: disable=cell-var-from-loop
                    sx[None], sy[None], qx[None], steps=steps, bn_mode="support")[0]

            sx, sy, qx = _episode(ways, 28)
            result = _time(lambda: in_process(sx, sy, qx), _CALLS.value, _WARMUP.value)
            print(json.dumps({"workload": workload, "method": "tfmeta in-process adapt+predict",
                              "input_size": 28, "inner_steps": steps, **result,
                              **dict(common, filters=_FILTERS.value)}), flush=True)


if __name__ == "__main__":
    app.run(main)
