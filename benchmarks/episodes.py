"""Throughput of the episode pipeline alone, from an in-memory pool.

Prints one JSON line per workload on stdout (logs go to stderr):

* ``episodes_per_second``: ``episode_dataset(..., batch_size=B)``, the
  production path (per-episode index sampling, then one vectorised gather per
  batch from the pre-rotated pool).
* ``baseline_episodes_per_second``, measured in the same run:
  ``sample_episode`` mapped over episode indices, then ``batch(B)``, i.e. the
  straightforward tf.data pipeline producing the same episodes.

The pool is the Omniglot maml train split (1100 characters) if the archives
are found (``$TFMETA_OMNIGLOT_ARCHIVES``, else ``<repo>/../shared/omniglot``),
otherwise a synthetic uint8 pool of the same shape; the ``pool`` field says
which. Preparing real data writes to a temporary TFDS data dir.

Usage:
    python benchmarks/episodes.py --seconds 10 --batch_size 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from tfmeta import episodes, omniglot

WORKLOADS = {
    "5way1shot": episodes.EpisodeSpec(ways=5, shots=1, queries=15),
    "20way5shot": episodes.EpisodeSpec(ways=20, shots=5, queries=15),
}


def _archives_dir() -> str | None:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (omniglot.archives_dir_from_env(),
                      os.path.join(repo, "..", "shared", "omniglot")):
        if candidate and os.path.isfile(os.path.join(candidate, "images_background.zip")):
            return candidate
    return None


def load_pool() -> tuple[np.ndarray, str]:
    """Returns (uint8 [1100, 20, 28, 28] pool, description of its origin)."""
    archives = _archives_dir()
    if archives is None:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (1100, 20, 28, 28), dtype=np.uint8), "synthetic"
    # TFDS reports preparation on stdout; keep stdout for the JSON lines.
    with tempfile.TemporaryDirectory() as data_dir, contextlib.redirect_stdout(sys.stderr):
        data = omniglot.load(data_dir=data_dir, archives_dir=archives)
    return omniglot.split(data, "maml", "train"), "omniglot maml train"


def baseline_dataset(pool: np.ndarray, spec: episodes.EpisodeSpec, seed: int,
                     batch_size: int) -> tf.data.Dataset:
    """Per-episode sampling mapped over indices, then batched."""
    images = tf.constant(pool)
    ds = tf.data.Dataset.counter().map(
        lambda i: episodes.sample_episode(images, spec, episodes.episode_seed(seed, 0, i)),
        num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def measure(ds: tf.data.Dataset, batch_size: int, seconds: float) -> float:
    """Episodes per second over ``seconds`` after a warm-up."""
    iterator = iter(ds)
    for _ in range(5):  # Warm-up: tracing, autotuning, buffers.
        next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += batch_size
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--batch_size", type=int, default=32, help="tasks per batch")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--no_baseline", action="store_true", help="skip the per-episode baseline")
    args = parser.parse_args()

    pool, origin = load_pool()
    for name in args.workloads:
        spec = WORKLOADS[name]
        rate = measure(episodes.episode_dataset(pool, spec, seed=0, batch_size=args.batch_size),
                       args.batch_size, args.seconds)
        record = {"workload": name, "ways": spec.ways, "shots": spec.shots,
                  "queries": spec.queries, "rotate": spec.rotate, "batch_size": args.batch_size,
                  "episodes_per_second": round(rate, 1)}
        if not args.no_baseline:
            baseline = measure(baseline_dataset(pool, spec, 0, args.batch_size),
                               args.batch_size, args.seconds)
            record.update(baseline_episodes_per_second=round(baseline, 1),
                          speedup=round(rate / baseline, 2))
        record.update(pool=origin, pool_shape=list(pool.shape), cpus=os.cpu_count(),
                      seconds=args.seconds)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
