"""Throughput of the episode pipeline: Omniglot in memory; any image source in memory or streamed.

Without ``--source`` it measures the Omniglot workloads and prints one JSON line per workload on
stdout (logs go to stderr):

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

With ``--source`` it measures the episodes of a config (``--config``, by default
``configs/miniimagenet_maml.py:5way1shot``: 5-way 1-shot, 15 queries, no rotation, 84x84x3, a
per-replica batch of 4 tasks) drawn from the train split of a prepared image source, with the
split in memory (``Prepared.read`` into an ``ImagePool``) and streamed from its shards
(``Prepared.files`` into a ``ShardPool``), each in a fresh process so that peak memory does not
mix. ``--source`` is any ``data.source`` string (``folder:PATH``, ``tfds:NAME``,
``miniimagenet:PATH``, ...), prepared into ``--prepared_dir`` as training would, or
``generated:CLASSESxIMAGES`` (e.g. ``generated:100x600``, mini-ImageNet's size): that many classes,
all in the train split, of random uint8 images at the config's size, written directly as prepared
shards into ``--prepared_dir`` (reused when present); ``generated:CLASSESxIMAGES/N`` writes N
images per shard. Several sources are measured in one run, their settings alternating over
``--rounds``. In the same run it measures the tasks/s of the config's meta-training steps (the
trainer's compiled loop on a repeated synthetic batch of the config's shape) and prints one JSON
line per (source, storage mode) with ``ratio = episodes_per_second / training_tasks_per_second``
and whether it reaches ``--required_ratio``. Memory mode is skipped, and its line says why, when
its predicted peak does not fit in the memory available. Results: docs/performance.md.

Usage:
    python benchmarks/episodes.py --seconds 10 --batch_size 32
    python benchmarks/episodes.py --source generated:100x600 generated:500x600 --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from tfmeta.run.config import load_file as load_config

# TensorFlow is imported where it is used: with --source the parent process only prepares the
# sources, measures training and starts a fresh process per storage mode.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = {
    "5way1shot": dict(ways=5, shots=1, queries=15),
    "20way5shot": dict(ways=20, shots=5, queries=15),
}
DEFAULT_CONFIG = os.path.join(REPO, "configs", "miniimagenet_maml.py") + ":5way1shot"
STORAGES = ("memory", "stream")
# Memory mode's peak RSS, measured with TensorFlow 2.21 on CPU (docs/performance.md): TensorFlow
# and the pipeline, plus about 4x the pixels (Prepared.read's array, the tensor converted from it,
# twice its size, and a transient copy when tf.data first runs the pipeline). Memory mode is
# skipped when that would exceed MEMORY_FRACTION of the memory available.
MEMORY_MODE_BASE_MB = 600
MEMORY_MODE_PEAK_FACTOR = 4
MEMORY_FRACTION = 0.8
GENERATED = "generated"
SPLIT = "train"


def _archives_dir() -> str | None:
    from tfmeta.data import omniglot

    for candidate in (omniglot.archives_dir_from_env(),
                      os.path.join(REPO, "..", "shared", "omniglot")):
        if candidate and os.path.isfile(os.path.join(candidate, "images_background.zip")):
            return candidate
    return None


def load_pool() -> tuple[np.ndarray, str]:
    """Returns (uint8 [1100, 20, 28, 28] pool, description of its origin)."""
    from tfmeta.data import omniglot

    archives = _archives_dir()
    if archives is None:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (1100, 20, 28, 28), dtype=np.uint8), "synthetic"
    # TFDS reports preparation on stdout; keep stdout for the JSON lines.
    with tempfile.TemporaryDirectory() as data_dir, contextlib.redirect_stdout(sys.stderr):
        data = omniglot.load(data_dir=data_dir, archives_dir=archives)
    return omniglot.split(data, "maml", "train"), "omniglot maml train"


def baseline_dataset(pool: np.ndarray, spec, seed: int, batch_size: int):
    """Per-episode sampling mapped over indices, then batched."""
    import tensorflow as tf

    from tfmeta.data import episodes

    images = tf.constant(pool)
    ds = tf.data.Dataset.counter().map(
        lambda i: episodes.sample_episode(images, spec, episodes.episode_seed(seed, 0, i)),
        num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def measure(ds, batch_size: int, seconds: float) -> float:
    """Episodes per second over ``seconds`` after a warm-up."""
    iterator = iter(ds)
    for _ in range(5):  # Warm-up: tracing, autotuning, buffers.
        next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += batch_size
    return count / (time.perf_counter() - start)


def omniglot_workloads(args: argparse.Namespace) -> None:
    from tfmeta.data import episodes

    batch_size = args.batch_size or 32
    pool, origin = load_pool()
    for name in args.workloads:
        spec = episodes.EpisodeSpec(**WORKLOADS[name])
        rate = measure(episodes.episode_dataset(pool, spec, seed=0, batch_size=batch_size),
                       batch_size, args.seconds)
        record = {"workload": name, "ways": spec.ways, "shots": spec.shots,
                  "queries": spec.queries, "rotate": spec.rotate, "batch_size": batch_size,
                  "episodes_per_second": round(rate, 1)}
        if not args.no_baseline:
            baseline = measure(baseline_dataset(pool, spec, 0, batch_size),
                               batch_size, args.seconds)
            record.update(baseline_episodes_per_second=round(baseline, 1),
                          speedup=round(rate / baseline, 2))
        record.update(pool=origin, pool_shape=list(pool.shape), cpus=os.cpu_count(),
                      seconds=args.seconds)
        print(json.dumps(record), flush=True)


# ------------------------------------------------------------------ prepared image sources
def parse_generated(source: str) -> tuple[int, int, int | None]:
    """``generated:CLASSESxIMAGES[/RECORDS_PER_SHARD]`` -> (classes, images, records or None)."""
    text = source.partition(":")[2]
    try:
        size, _, records = text.partition("/")
        classes, images = (int(v) for v in size.lower().split("x"))
        records_per_shard = int(records) if records else None
    except ValueError:
        raise SystemExit(f"--source={source!r}: expected generated:CLASSESxIMAGES"
                         "[/RECORDS_PER_SHARD], e.g. generated:100x600") from None
    if classes <= 0 or images <= 0 or (records_per_shard is not None and records_per_shard <= 0):
        raise SystemExit(f"--source={source!r}: classes, images and records must be positive")
    return classes, images, records_per_shard


def _generated_image(item: tuple[int, int, int], *, name: str, size: int, channels: int,
                     resize: str, min_side: int) -> np.ndarray:
    """The decode function of a generated source: random pixels of (seed, class, image)."""
    return np.random.default_rng(item).integers(0, 256, (size, size, channels), np.uint8)


def prepare_generated(source: str, root: str, *, image_size: int, channels: int, seed: int = 0):
    """Writes a generated source's shards into ``root`` (or reuses them): a ``Prepared``.

    The listing's items are ``(seed, class, image)``; ``_generated_image`` turns each into its
    pixels while the class is written, so memory holds no more than the class being prepared.
    Shards hold ``RECORDS_PER_SHARD`` images when the source names it, else what
    ``tfmeta.data.class_store`` writes (about 256 KB per shard).
    """
    from tfmeta.data import class_store
    from tfmeta.data.class_listing import ClassImages, Listing

    classes, images, records_per_shard = parse_generated(source)
    listing = Listing(
        {SPLIT: [ClassImages(f"g{c:05d}", [(seed, c, i) for i in range(images)],
                             [f"g{c:05d}[{i}]" for i in range(images)])
                 for c in range(classes)]},
        fingerprint=f"{source} seed {seed}", origin="generated: random pixels, every class in "
                                                    "train")
    name = f"generated-{classes}x{images}-{image_size}x{image_size}x{channels}"
    if records_per_shard:
        name += f"-{records_per_shard}-per-shard"
    directory = os.path.join(root, name)
    if not os.path.exists(os.path.join(directory, class_store.SPEC_FILE)):
        print(f"Writing {classes} x {images} generated images to {directory}", file=sys.stderr)
    target = class_store.TARGET_SHARD_BYTES
    if records_per_shard:
        class_store.TARGET_SHARD_BYTES = records_per_shard * image_size * image_size * channels
    try:
        return class_store.prepare(listing, directory, image_size=image_size, channels=channels,
                                   source=source, decode=_generated_image)
    finally:
        class_store.TARGET_SHARD_BYTES = target


def prepare_source(source: str, config, prepared_dir: str):
    """The prepared data of ``source`` at the config's image size and channels."""
    from tfmeta.data import image_sources

    d = config.data
    root = image_sources.prepared_root(prepared_dir, d.data_dir)
    if source.partition(":")[0] == GENERATED:
        return prepare_generated(source, root, image_size=d.image_size, channels=d.channels)
    return image_sources.prepare(
        source, image_size=d.image_size, channels=d.channels, resize=d.resize,
        min_side=d.min_image_side, data_dir=d.data_dir, prepared_dir=root,
        fractions=tuple(d.split_fractions), split_seed=d.split_seed, class_lists=d.class_lists)


def episode_spec(config):
    """The meta-training ``EpisodeSpec`` of a config (its training shots)."""
    from tfmeta.run import config as config_lib
    from tfmeta.data import episodes

    d = config.data
    return episodes.EpisodeSpec(d.ways, config_lib.train_shots(config), d.queries,
                                rotate=d.rotate, augment=d.augment,
                                crop_padding=d.crop_padding if d.augment else 0)


def _usable(prepared, needed: int) -> list[int]:
    return [i for i, c in enumerate(prepared.classes[SPLIT]) if c.count >= needed]


def make_pool(prepared, storage: str, needed: int):
    """The train split as training builds it (``tfmeta.run.tasks``): in memory or as shards."""
    from tfmeta.data import episodes

    classes = _usable(prepared, needed)
    if not classes:
        raise SystemExit(f"split {SPLIT!r} of {prepared.source!r} has no class with at least "
                         f"{needed} images")
    counts = [prepared.classes[SPLIT][c].count for c in classes]
    if storage == "memory":
        return episodes.ImagePool(prepared.read(SPLIT, classes), counts)
    files, first = prepared.files(SPLIT, classes)
    return episodes.ShardPool(files, first, counts, prepared.records_per_shard,
                              prepared.image_shape)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def storage_child(args: argparse.Namespace) -> None:
    """Measures one storage mode (run in a fresh process) and prints its JSON line."""
    from tfmeta.data import class_store, episodes

    config = load_config(args.config)
    spec = episode_spec(config)
    batch_size = args.batch_size or config.train.meta_batch_size
    prepared = class_store.load(args.prepared_path)
    load_start = _load()
    t0 = time.perf_counter()
    pool = make_pool(prepared, args.storage_child, spec.drawings_per_class)
    load_seconds = time.perf_counter() - t0
    normalization = None
    if config.data.normalize:
        normalization = ((tuple(config.data.mean), tuple(config.data.std)) if config.data.mean
                         else prepared.mean_std(SPLIT))
    ds = episodes.episode_dataset(pool, spec, seed=0, batch_size=batch_size,
                                  normalization=normalization)
    rate = measure(ds, batch_size, args.seconds)
    classes = _usable(prepared, spec.drawings_per_class)
    images = sum(prepared.classes[SPLIT][c].count for c in classes)
    print(json.dumps({
        "source": args.source[0], "storage": args.storage_child, "split": SPLIT,
        "classes": len(classes), "images": images,
        "dataset_bytes": images * prepared.record_bytes,
        "image_shape": list(prepared.image_shape), "ways": spec.ways, "shots": spec.shots,
        "queries": spec.queries, "rotate": spec.rotate, "batch_size": batch_size,
        "episodes_per_second": round(rate, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
        "load_seconds": round(load_seconds, 2), "seconds": args.seconds,
        "load_average": {"start": load_start, "end": _load()}}), flush=True)


def measure_training(config, seconds: float, steps_per_loop: int) -> dict:
    """Tasks/s of the config's meta-training: the trainer's compiled loop, one synthetic batch.

    The experiment is built from the config as ``tfmeta.train`` builds it (model, meta-learner,
    optimizer); its data is never read (the task source loads on first use): every step takes a
    synthetic batch of the config's shape from a repeated ``tf.data`` stream.
    """
    import tensorflow as tf

    from tfmeta.run import experiment, trainer

    d = config.data
    strategy = tf.distribute.get_strategy()
    exp = experiment.build_experiment(config, strategy, check_data=False)
    spec = episode_spec(config)
    batch = config.train.meta_batch_size
    shape = (d.image_size, d.image_size, d.channels)
    rng = np.random.default_rng(0)

    def examples(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.random((batch, spec.ways * per_class, *shape), np.float32)
        y = np.tile(np.repeat(np.arange(spec.ways, dtype=np.int32), per_class), (batch, 1))
        return x, y

    support_x, support_y = examples(spec.shots)
    query_x, query_y = examples(spec.queries)
    data = tf.data.Dataset.from_tensors({"support_x": support_x, "support_y": support_y,
                                         "query_x": query_x, "query_y": query_y}).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(data))
    loop = trainer._make_train_loop(exp, trainer.phase(config, 0)[0])

    def run(n: int) -> None:
        float(loop(iterator, tf.constant(n, tf.int64))[0]["loss"])

    t0 = time.perf_counter()
    run(1)  # trace
    compile_seconds = time.perf_counter() - t0
    run(steps_per_loop)  # warm-up
    load_start = _load()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(steps_per_loop)
        steps += steps_per_loop
    elapsed = time.perf_counter() - start
    return {"training_tasks_per_second": round(steps * batch / elapsed, 3),
            "training_meta_batch": batch, "training_steps": steps,
            "training_seconds": round(elapsed, 1),
            "training_compile_seconds": round(compile_seconds, 1),
            "training_load_average": {"start": load_start, "end": _load()}}


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _mem_available_mb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def memory_mode_fits(dataset_bytes: int) -> tuple[bool, dict]:
    """Whether memory mode's predicted peak fits in the memory available now (and the figures)."""
    predicted = MEMORY_MODE_BASE_MB + MEMORY_MODE_PEAK_FACTOR * dataset_bytes / 2**20
    available = _mem_available_mb()
    facts = {"predicted_peak_rss_mb": round(predicted), "mem_available_mb":
             None if available is None else round(available)}
    return available is None or predicted <= MEMORY_FRACTION * available, facts


def _run_child(args: argparse.Namespace, source: str, storage: str, directory: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), f"--source={source}",
               f"--config={args.config}", f"--seconds={args.seconds}",
               f"--storage_child={storage}", f"--prepared_path={directory}"]
    if args.batch_size:
        command.append(f"--batch_size={args.batch_size}")
    proc = subprocess.run(command, env=_child_env(), stdout=subprocess.PIPE, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _skipped_memory_mode(args: argparse.Namespace, config, source: str, prepared) -> dict | None:
    """The line of a memory mode that would not fit (None if it fits or is not checked)."""
    if not args.memory_check:
        return None
    needed = episode_spec(config).drawings_per_class
    dataset_bytes = sum(prepared.classes[SPLIT][c].count
                        for c in _usable(prepared, needed)) * prepared.record_bytes
    fits, facts = memory_mode_fits(dataset_bytes)
    if fits:
        return None
    return {"source": source, "storage": "memory", "split": SPLIT,
            "dataset_bytes": dataset_bytes, "skipped": True,
            "reason": f"predicted peak RSS {facts['predicted_peak_rss_mb']} MB "
                      f"({MEMORY_MODE_PEAK_FACTOR}x the split's pixels + {MEMORY_MODE_BASE_MB} "
                      f"MB) exceeds {MEMORY_FRACTION:.0%} of the {facts['mem_available_mb']} MB "
                      "available",
            **facts, "load_average": _load()}


def source_benchmark(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    config_name = os.path.relpath(args.config, REPO)
    prepared = {source: prepare_source(source, config, args.prepared_dir)
                for source in args.source}
    if args.training_tasks_per_second:
        training = {"training_tasks_per_second": args.training_tasks_per_second,
                    "training_measured": False}
    else:
        training = {**measure_training(config, args.training_seconds or args.seconds,
                                       args.steps_per_loop), "training_measured": True}
    print(json.dumps({"benchmark": "training", "config": config_name, **training}),
          file=sys.stderr, flush=True)
    results: dict[tuple[str, str], dict] = {}
    settings = []
    for source in args.source:
        for storage in args.storage:
            skipped = (_skipped_memory_mode(args, config, source, prepared[source])
                       if storage == "memory" else None)
            if skipped:
                results[(source, storage)] = skipped
            else:
                settings.append((source, storage))
    # Rounds alternate the settings (each in a fresh process) so that the machine's drift in
    # speed is shared between them.
    runs: dict[tuple[str, str], list[dict]] = {setting: [] for setting in settings}
    for r in range(args.rounds):
        shift = r % max(1, len(settings))
        for source, storage in settings[shift:] + settings[:shift]:
            runs[(source, storage)].append(
                _run_child(args, source, storage, prepared[source].directory))
    for setting in settings:
        record = dict(runs[setting][0])
        rates = [run["episodes_per_second"] for run in runs[setting]]
        record.update(
            episodes_per_second=round(sum(rates) / len(rates), 1),
            episodes_per_second_by_round=rates, rounds=args.rounds,
            peak_rss_mb=max(run["peak_rss_mb"] for run in runs[setting]),
            load_average=[run["load_average"] for run in runs[setting]])
        ratio = record["episodes_per_second"] / training["training_tasks_per_second"]
        record.update(ratio=round(ratio, 2), required_ratio=args.required_ratio,
                      meets_required_ratio=ratio >= args.required_ratio)
        results[setting] = record
    for source in args.source:
        for storage in args.storage:
            print(json.dumps({**results[(source, storage)], "config": config_name,
                              "prepared_dir": prepared[source].directory,
                              "cpus": os.cpu_count(), **training}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="tasks per batch (default: 32 for Omniglot, the config's meta-batch "
                             "for --source)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--no_baseline", action="store_true", help="skip the per-episode baseline")
    parser.add_argument("--source", nargs="+", default=[],
                        help="data.source strings, or generated:CLASSESxIMAGES[/RECORDS_PER_SHARD]"
                             " (several: measured in the same run)")
    parser.add_argument("--storage", nargs="+", default=list(STORAGES), choices=STORAGES)
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="config (path.py[:variant]) of the episodes and the training step")
    parser.add_argument("--prepared_dir", default="",
                        help="where prepared sources are (default: <TFDS data dir>/"
                             "tfmeta_prepared)")
    parser.add_argument("--training_seconds", type=float, default=0.0,
                        help="timed seconds of training steps (default: --seconds)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measurements of each storage mode, alternating, each in a fresh "
                             "process")
    parser.add_argument("--no_memory_check", dest="memory_check", action="store_false",
                        help="run memory mode even if its predicted peak exceeds the memory "
                             "available")
    parser.add_argument("--steps_per_loop", type=int, default=1,
                        help="meta-iterations per compiled training call")
    parser.add_argument("--training_tasks_per_second", type=float, default=0.0,
                        help="compare with this training throughput (e.g. measured on an "
                             "accelerator) instead of measuring the config's training here")
    parser.add_argument("--required_ratio", type=float, default=5.0,
                        help="episodes/s needed per training task/s")
    parser.add_argument("--storage_child", default="", choices=("",) + STORAGES,
                        help=argparse.SUPPRESS)
    parser.add_argument("--prepared_path", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.storage_child:
        if len(args.source) != 1:
            parser.error("a storage mode is measured on one source")
        storage_child(args)
    elif args.source:
        source_benchmark(args)
    else:
        omniglot_workloads(args)


if __name__ == "__main__":
    main()
