"""Meta-training throughput by number of tasks computed together, and the accelerator proxy.

    python benchmarks/train_throughput.py [--seconds 10] [--workloads a,b,c,d,e]
        [--tasks_in_parallel 1,4,all,auto] [--ops 8,16,32,64] [--ops_workload a] [--rss]
        [--keras_fit]

Workloads (a)-(d): second-order MAML on the 64-filter conv4 network (stride-2 convolutions,
spatial mean), synthetic 28x28x1 episodes, transductive batch norm, as in the learn2learn
comparison:

  a  5-way 1-shot, 1 query per class, meta-batch 32, 1 inner step (inner lr 0.4)
  b  as (a) with 15 queries per class
  c  20-way 1-shot, 1 query per class, meta-batch 16, 5 inner steps (inner lr 0.1)
  d  as (b), first order

Workload (e) is MAML's mini-ImageNet 5-way 1-shot setup: synthetic 84x84x3 episodes, conv4 with
32 filters, 2x2 max pooling and a flattened head, 15 queries per class, meta-batch 4, 5 inner
steps (inner lr 0.01), second order, queries normalised with the support set's statistics
(``bn_mode="support"``).

Three measurements, each printed as JSON lines:

* ``throughput`` (one line per workload and ``tasks_in_parallel``): tasks/s of one
  meta-iteration (meta-gradients + Adam update, 5 iterations per compiled call, as in the
  trainer), all measured in this run, interleaved in rounds; ``tasks_in_parallel=1`` (one task
  at a time, the loop) is the baseline every line carries as ``speedup_vs_loop``.
* ``ops`` (``--ops``): the accelerator proxy. The meta-gradient step of ``--ops_workload``
  (default (a)) at meta-batch B is compiled by XLA and its optimised HLO is read: each instruction counts once
  (a fusion counts as one kernel), the instructions of a while loop's body count once per trip.
  On a GPU or TPU each is roughly one kernel launch, so this is what a meta-iteration costs in
  launches whatever the chip; with all tasks computed together it must not grow with B.
* ``rss`` (``--rss``): peak resident memory of a process running workload (c) with each
  ``tasks_in_parallel`` (a fresh process each, so peaks do not mix).
* ``keras_fit`` (``--keras_fit``): workload (a) trained by ``tfmeta.keras.MetaModel.fit``
  against the trainer's own compiled loop (``tfmeta.run.trainer``'s ``train_loop``: ``strategy.run``
  of the meta-step and Adam update, state and metric reductions, ``--steps_per_loop``
  meta-iterations per call), both reading the same batch from a repeated ``tf.data`` stream,
  ``steps_per_execution`` = ``--steps_per_loop``, the default ``tasks_in_parallel`` and no
  strategy. One ``fit()`` call whose epochs (callbacks and logs included) alternate with
  rounds of the trainer's loop of the same number of meta-iterations. One line each, the fit
  line with ``fraction_of_trainer``.

The input pipeline is excluded: every iteration reuses one synthetic batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfmeta.core import grouping, models
from tfmeta.core.maml import MAML  # noqa: E402

# The network, inputs and batch-norm mode of the Omniglot workloads (a)-(d).
_OMNIGLOT = dict(image_size=28, channels=1, filters=64, downsample="stride", head="mean",
                 bn_mode="transductive")
WORKLOADS = {
    "a": dict(ways=5, shots=1, queries=1, meta_batch=32, inner_steps=1, inner_lr=0.4,
              first_order=False, **_OMNIGLOT),
    "b": dict(ways=5, shots=1, queries=15, meta_batch=32, inner_steps=1, inner_lr=0.4,
              first_order=False, **_OMNIGLOT),
    "c": dict(ways=20, shots=1, queries=1, meta_batch=16, inner_steps=5, inner_lr=0.1,
              first_order=False, **_OMNIGLOT),
    "d": dict(ways=5, shots=1, queries=15, meta_batch=32, inner_steps=1, inner_lr=0.4,
              first_order=True, **_OMNIGLOT),
    # MAML's mini-ImageNet 5-way 1-shot setup (Finn et al. 2017).
    "e": dict(ways=5, shots=1, queries=15, meta_batch=4, inner_steps=5, inner_lr=0.01,
              first_order=False, image_size=84, channels=3, filters=32, downsample="maxpool",
              head="flatten", bn_mode="support"),
}


def _batch(w: dict, meta_batch: int) -> dict[str, tf.Tensor]:
    ways, shots, queries = w["ways"], w["shots"], w["queries"]
    image = [w["image_size"], w["image_size"], w["channels"]]
    rng = tf.random.Generator.from_seed(0)
    labels = lambda n: tf.tile(tf.range(ways, dtype=tf.int32)[None, :, None], [meta_batch, 1, n])  # noqa: E731
    return {
        "support_x": rng.uniform([meta_batch, ways * shots, *image]),
        "support_y": tf.reshape(labels(shots), [meta_batch, ways * shots]),
        "query_x": rng.uniform([meta_batch, ways * queries, *image]),
        "query_y": tf.reshape(labels(queries), [meta_batch, ways * queries]),
    }


def _parse_k(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _learner(w: dict, k, meta_batch: int | None = None):
    model = models.conv4(w["ways"], image_size=w["image_size"], channels=w["channels"],
                         filters=w["filters"], downsample=w["downsample"], head=w["head"], seed=0)
    maml = MAML(model, inner_lr=w["inner_lr"], inner_steps=w["inner_steps"],
                first_order=w["first_order"], bn_mode=w["bn_mode"], tasks_in_parallel=k)
    batch = _batch(w, meta_batch or w["meta_batch"])
    return model, maml, batch


class _Setting:
    """One workload with one ``tasks_in_parallel``: built and compiled, ready to be timed."""

    def __init__(self, workload: str, k, steps_per_loop: int):
        self.workload, self.k, self.steps_per_loop = workload, k, steps_per_loop
        w = self.w = WORKLOADS[workload]
        _, maml, batch = _learner(w, k)
        optimizer = keras.optimizers.Adam(1e-3)
        optimizer.build(maml.meta_variables)
        self.group = maml.group_size(w["meta_batch"], w["ways"] * (w["shots"] + w["queries"]))

        @tf.function
        def loop(n):
            loss = tf.constant(0.0)
            for _ in tf.range(n):
                step = maml.meta_step(batch, global_batch_size=w["meta_batch"])
                optimizer.apply_gradients(zip(step.grads, maml.meta_variables))
                loss = step.metrics["loss"]
            return loss

        t0 = time.perf_counter()
        float(loop(tf.constant(1)))  # trace and compile
        self.compile_seconds = time.perf_counter() - t0
        float(loop(tf.constant(steps_per_loop)))  # warm-up
        self.loop, self.iterations, self.seconds, self.rates = loop, 0, 0.0, []

    def run(self, seconds: float) -> None:
        """Times whole compiled calls for about ``seconds``."""
        iterations, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            float(self.loop(tf.constant(self.steps_per_loop)))
            iterations += self.steps_per_loop
        elapsed = time.perf_counter() - start
        self.iterations += iterations
        self.seconds += elapsed
        self.rates.append(iterations * self.w["meta_batch"] / elapsed)

    def result(self) -> dict:
        return {
            "benchmark": "train_throughput", "workload": self.workload,
            "tasks_in_parallel": str(self.k), "tasks_computed_together": self.group, **self.w,
            "tasks_per_second": round(self.iterations * self.w["meta_batch"] / self.seconds, 2),
            "tasks_per_second_by_round": [round(r, 1) for r in self.rates],
            "seconds_per_iteration": round(self.seconds / self.iterations, 4),
            "iterations": self.iterations, "compile_seconds": round(self.compile_seconds, 1),
            "tensorflow": tf.__version__, "cpus": os.cpu_count(), "machine": platform.machine(),
        }


def _group(workload: str, k) -> int:
    """How many tasks ``tasks_in_parallel=k`` computes together on ``workload`` here."""
    w = WORKLOADS[workload]
    if k == "auto":
        return grouping.auto_tasks_in_parallel(
            w["meta_batch"], w["ways"] * (w["shots"] + w["queries"]),
            second_order=not w["first_order"])
    return w["meta_batch"] if k == "all" else min(int(k), w["meta_batch"])


def measure_workload(workload: str, ks: list, seconds: float, steps_per_loop: int,
                     rounds: int) -> list[dict]:
    """Every setting of ``workload``, timed in interleaved rounds.

    The machine's speed drifts by 10-25 % over minutes; timing each setting for a slice of every
    round, in a rotating order, spreads that drift over all of them instead of biasing whichever
    ran last. Each setting gets ``seconds`` in total. Settings that compute the same number of
    tasks together (``"auto"`` resolves to one of the others) are one computation: it is timed
    once and reported for each, with ``same_computation_as``.
    """
    settings: dict[int, _Setting] = {}
    for k in ks:
        settings.setdefault(_group(workload, k), _Setting(workload, k, steps_per_loop))
    unique = list(settings.values())
    for r in range(rounds):
        for setting in unique[r % len(unique):] + unique[:r % len(unique)]:
            setting.run(seconds / rounds)
    results = []
    for k in ks:
        setting = settings[_group(workload, k)]
        result = dict(setting.result(), tasks_in_parallel=str(k))
        if str(setting.k) != str(k):
            result["same_computation_as"] = str(setting.k)
        results.append(result)
    return results


def measure(workload: str, k, seconds: float, steps_per_loop: int) -> dict:
    """Tasks/s of ``workload`` with ``tasks_in_parallel=k`` for about ``seconds``."""
    return measure_workload(workload, [k], seconds, steps_per_loop, rounds=1)[0]


# ------------------------------------------------------------------- Keras fit vs trainer
def _trainer_loop(workload: str, steps_per_loop: int):
    """The trainer's compiled loop over a repeated batch of ``workload``: ``(loop, iterator)``."""
    import ml_collections

    from tfmeta.run import config as config_lib, experiment, trainer

    w = WORKLOADS[workload]
    model, maml, batch = _learner(w, "auto")
    config = config_lib.base_config()
    config.train.meta_batch_size = w["meta_batch"]
    strategy = tf.distribute.get_strategy()
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(maml.meta_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    exp = experiment.Experiment(config=ml_collections.ConfigDict(config), strategy=strategy,
                             source=None, model=model, algorithm=maml, optimizer=optimizer,
                             step=step, wall_seconds=tf.Variable(0.0, tf.float64),
                             train_seconds=tf.Variable(0.0, tf.float64))
    loop = trainer._make_train_loop(exp, {"first_order": w["first_order"]})
    data = tf.data.Dataset.from_tensors(batch).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(data))
    return lambda n: loop(iterator, tf.constant(n, tf.int64)), batch


def measure_keras_fit(workload: str, seconds: float, steps_per_loop: int,
                      rounds: int) -> list[dict]:
    """Tasks/s of ``MetaModel.fit`` and of the trainer's loop on ``workload``, interleaved.

    One ``fit()`` call of ``rounds`` epochs, as a training run makes it; a callback times each
    epoch and runs a round of the trainer's loop of the same number of meta-iterations between
    epochs, before or after the timed epoch in alternating rounds (the machine's speed drifts;
    whichever ran second would otherwise always get the same share of it). The number of
    meta-iterations per round comes from the warm-up: about ``seconds / rounds / 2`` each.
    Timing epochs rather than whole ``fit()`` calls leaves out the end of a call, where
    destroying the data iterator waits for tf.data's autotuning thread to wake (TensorFlow
    2.21: up to ~10 s after a call of ~10 s; once per training run in practice).
    """
    from tfmeta.keras import MetaModel

    w = WORKLOADS[workload]
    train_loop, _ = _trainer_loop(workload, steps_per_loop)
    _, maml, batch = _learner(w, "auto")
    meta = MetaModel(maml)
    meta.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=steps_per_loop)
    data = tf.data.Dataset.from_tensors(batch).repeat()

    def trainer(iterations: int) -> float:
        t0 = time.perf_counter()
        for _ in range(iterations // steps_per_loop):
            float(train_loop(steps_per_loop)[0]["loss"])
        return time.perf_counter() - t0

    compile_seconds = {}
    t0 = time.perf_counter()
    trainer(steps_per_loop)  # trace and compile
    compile_seconds["trainer"] = time.perf_counter() - t0
    per_iteration = trainer(steps_per_loop) / steps_per_loop  # warm-up
    iterations = steps_per_loop * max(1, round(seconds / rounds / 2 / per_iteration
                                               / steps_per_loop))
    t0 = time.perf_counter()
    meta.fit(data, epochs=1, steps_per_epoch=steps_per_loop, verbose=0)  # trace and compile
    compile_seconds["keras_fit"] = time.perf_counter() - t0
    totals = {"trainer": [], "keras_fit": []}

    class Interleave(keras.callbacks.Callback):
        """Times each epoch; runs the trainer's round before it (even) or after it (odd)."""

        def on_epoch_begin(self, epoch, logs=None):
            if epoch % 2 == 0:
                totals["trainer"].append(trainer(iterations))
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            totals["keras_fit"].append(time.perf_counter() - self.start)
            if epoch % 2 == 1:
                totals["trainer"].append(trainer(iterations))

    meta.fit(data, epochs=rounds + 1, initial_epoch=0, steps_per_epoch=iterations, verbose=0,
             callbacks=[Interleave()])
    # The first epoch warms up fit's data pipeline, like the trainer's warm-up call.
    totals = {name: secs[1:] for name, secs in totals.items()}
    results = []
    for name in ("trainer", "keras_fit"):
        secs = totals[name]
        done = iterations * len(secs)
        results.append({
            "benchmark": "keras_fit", "workload": workload, "loop": name, **w,
            "steps_per_execution": steps_per_loop,
            "tasks_per_second": round(done * w["meta_batch"] / sum(secs), 2),
            "tasks_per_second_by_round": [round(iterations * w["meta_batch"] / t, 1)
                                          for t in secs],
            "iterations": done, "compile_seconds": round(compile_seconds[name], 1),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "cpus": os.cpu_count(), "machine": platform.machine()})
    results[1]["fraction_of_trainer"] = round(
        results[1]["tasks_per_second"] / results[0]["tasks_per_second"], 3)
    return results


# --------------------------------------------------------------------------- HLO op count
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_WHILE = re.compile(r"\bwhile\(.*condition=%?([\w.\-]+), body=%?([\w.\-]+)")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CALLS = re.compile(
    r"\b(?:call|conditional)\(.*?(?:to_apply|branch_computations)=\{?%?([\w.\-, %]+)\}?")
_FREE = ("parameter(", "constant(", "get-tuple-element(", "tuple(", "bitcast(")


def executed_instructions(hlo: str, trips: int = 1) -> int:
    """Instructions an XLA module executes: while bodies times their trip counts.

    Fusions count as one instruction (one kernel); parameters, constants, tuples and bitcasts,
    which launch nothing, are not counted. A while loop's trip count is XLA's
    ``known_trip_count`` when it annotates one, else ``trips`` (the caller knows it: the loop
    over groups of tasks runs once per group).
    """
    computations: dict[str, list[str]] = {}
    entry, name = None, None
    for line in hlo.splitlines():
        match = _COMPUTATION.match(line.strip())
        if match and "=" not in line.split("{")[0].split("(")[0]:
            name = match.group(1)
            computations[name] = []
            if line.strip().startswith("ENTRY"):
                entry = name
        elif line.strip() == "}":
            name = None
        elif name is not None and "=" in line:
            computations[name].append(line.strip())

    def count(comp: str) -> int:
        total = 0
        for inst in computations.get(comp, []):
            op = inst.split("=", 1)[1].strip()
            op = op.split(" ", 1)[1] if " " in op else op  # drop the shape
            if any(op.startswith(free) for free in _FREE):
                continue
            total += 1
            loop = _WHILE.search(inst)
            if loop:
                found = _TRIPS.search(inst)
                n = int(found.group(1)) if found else trips
                total += n * (count(loop.group(1)) + count(loop.group(2)))
            else:
                for called in _CALLS.findall(inst):
                    for c in called.replace("%", "").split(","):
                        total += count(c.strip())
        return total

    return count(entry)


def op_count(meta_batch: int, k, workload: str = "a") -> dict:
    """Executed HLO instructions of ``workload``'s meta-gradient step at ``meta_batch``."""
    w = WORKLOADS[workload]
    model, maml, batch = _learner(w, k, meta_batch)
    step = tf.function(lambda b: maml.meta_step(b, global_batch_size=meta_batch).grads,
                       jit_compile=True)
    hlo = step.experimental_get_compiler_ir(batch)(stage="optimized_hlo")
    group = maml.group_size(meta_batch, w["ways"] * (w["shots"] + w["queries"]),
                            second_order=not w["first_order"])
    return {"benchmark": "ops_per_meta_iteration", "workload": workload,
            "meta_batch": meta_batch,
            "tasks_in_parallel": str(k), "tasks_computed_together": group,
            "executed_hlo_instructions": executed_instructions(hlo, trips=meta_batch // group),
            "hlo_instructions_in_module": sum(1 for line in hlo.splitlines() if " = " in line)}


# ---------------------------------------------------------------------------------- memory
def _peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_child(workload: str, k) -> None:
    """Runs a few iterations and prints this process's peak RSS (called in a fresh process)."""
    result = measure(workload, k, seconds=3.0, steps_per_loop=2)
    print(json.dumps({"benchmark": "peak_rss", "workload": workload, "tasks_in_parallel": str(k),
                      "tasks_computed_together": result["tasks_computed_together"],
                      "peak_rss_mb": round(_peak_rss_mb(), 1)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="timed seconds per setting (spread over the rounds)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps_per_loop", type=int, default=5)
    parser.add_argument("--workloads", default="a,b,c,d")
    parser.add_argument("--tasks_in_parallel", default="1,4,all,auto")
    parser.add_argument("--ops", default="", help="meta-batch sizes for the op count, e.g. 8,16")
    parser.add_argument("--ops_workload", default="a", choices=sorted(WORKLOADS),
                        help="the workload whose ops are counted")
    parser.add_argument("--rss", action="store_true", help="peak RSS of (c) for each setting")
    parser.add_argument("--keras_fit", action="store_true",
                        help="MetaModel.fit against the trainer's loop on workload (a)")
    parser.add_argument("--rss_child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    ks = [_parse_k(k) for k in args.tasks_in_parallel.split(",")]
    if args.rss_child:
        workload, k = args.rss_child.split(":")
        rss_child(workload, _parse_k(k))
        return
    print(json.dumps({"benchmark": "settings", "auto_rule": {
        "accelerator": "all", "cpu_first_order": 1, "cpu_second_order_small_tasks":
        grouping.CPU_GROUP, "cpu_small_task_max_examples": grouping.CPU_GROUP_MAX_EXAMPLES,
        "cpu_second_order_large_tasks": "all"},
        "on_accelerator": grouping.on_accelerator()}), flush=True)
    for workload in [w for w in args.workloads.split(",") if w]:
        results = measure_workload(workload, ks, args.seconds, args.steps_per_loop, args.rounds)
        loop = next((r for r in results if r["tasks_in_parallel"] == "1"), None)
        best = max(r["tasks_per_second"] for r in results)
        for r in results:
            if loop:
                r["speedup_vs_loop"] = round(r["tasks_per_second"] / loop["tasks_per_second"], 3)
            r["fraction_of_best"] = round(r["tasks_per_second"] / best, 3)
            print(json.dumps(r), flush=True)
    for meta_batch in [int(b) for b in args.ops.split(",") if b]:
        for k in (1, "all"):
            print(json.dumps(op_count(meta_batch, k, args.ops_workload)), flush=True)
    if args.keras_fit:
        for r in measure_keras_fit("a", args.seconds, args.steps_per_loop, args.rounds):
            print(json.dumps(r), flush=True)
    if args.rss:
        for k in ks:
            proc = subprocess.run([sys.executable, __file__, f"--rss_child=c:{k}"],
                                  capture_output=True, text=True, check=True)
            print(proc.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
