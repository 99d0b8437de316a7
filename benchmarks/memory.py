"""Peak memory and time of one second-order meta-gradient, by inner steps and rematerialisation.

    python benchmarks/memory.py [--networks conv4,resnet12] [--remat none,steps,blocks,imaml]
        [--tasks one,together] [--conv4_steps 1,5,10,25,50,100] [--resnet12_steps 1,3,5,10]
        [--limit_gb 18]

``--tasks one,together`` is ``--tasks_in_parallel 1,all`` (tasks one at a time, or the
meta-batch's tasks in one task-batched computation); ``--tasks_in_parallel`` also takes a group
size.

Every setting runs in a fresh process (peaks never mix): it builds the network, traces one
``meta_gradients`` call in a ``tf.function``, runs it once (the peak) and once more (the time).
Printed as JSON lines, one per setting: ``peak_rss_mb`` (the process's peak resident memory
during the first call, after tracing: Linux's peak RSS is reset once the function is traced; on a
GPU also ``gpu_peak_mb`` from ``tf.config.experimental.get_memory_info``), ``base_rss_mb`` (the
resident memory just before that call: TensorFlow, the traced graph, the network, the batch),
``tracing_peak_rss_mb`` (the peak while tracing),
``seconds`` (the second call) and, for ``remat="steps"`` / ``"blocks"``, ``seconds_vs_none`` and
``peak_vs_none`` against the ``"none"`` setting of the same network, steps and grouping measured
in this run (absent where ``"none"`` did not fit).

``--remat`` also takes ``imaml``: implicit MAML (lambda 2, 5 conjugate-gradient steps) instead of
second-order MAML, whose memory should not depend on the inner steps at all.

Networks (synthetic episodes, second-order MAML, transductive batch norm):

  conv4     MAML's mini-ImageNet network at 84x84x3: 32 filters, 2x2 max pooling, flattened head;
            5-way 1-shot, 15 queries per class, meta-batch 2, inner lr 0.01
  resnet12  ResNet-12 (tfmeta.core.models.resnet12) at 84x84x3; 5-way 5-shot, 5 queries per
            class, meta-batch 2, inner lr 0.01
  omniglot  MAML's Omniglot conv4 (64 filters, 28x28x1), as conv4 otherwise (the tests use it)

A setting whose peak would pass ``--limit_gb`` is stopped (a watchdog samples the child's RSS),
reported with ``"stopped": true`` and the RSS it had reached; larger step counts of the same
series are then skipped as well, so the machine never runs out of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NETWORKS = {
    "conv4": dict(ways=5, shots=1, queries=15, tasks=2, image=84, channels=3),
    "resnet12": dict(ways=5, shots=5, queries=5, tasks=2, image=84, channels=3),
    # MAML's Omniglot network (28x28x1, 64 filters): small enough for a test of the mechanism.
    "omniglot": dict(ways=5, shots=1, queries=15, tasks=2, image=28, channels=1),
}


def _peak_mb() -> float:
    # VmHWM follows reset_peak_rss; ru_maxrss (kilobytes on Linux) is the lifetime peak.
    from tfmeta.run.memory_budget import status_mb

    hwm = status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(network: str, steps: int, remat: str, tasks_in_parallel: str) -> dict:
    """One setting, in this (fresh) process."""
    import numpy as np
    import tensorflow as tf

    from tfmeta.core import imaml, maml, models
    from tfmeta.run import memory_budget

    spec = NETWORKS[network]
    size, channels = spec["image"], spec["channels"]
    if network == "conv4":
        model = models.conv4(spec["ways"], size, channels, 32, downsample="maxpool",
                             head="flatten")
    elif network == "omniglot":
        model = models.conv4(spec["ways"], size, channels, 64)
    else:
        model = models.resnet12(spec["ways"])
    tip = tasks_in_parallel if tasks_in_parallel in ("all", "auto") else int(tasks_in_parallel)
    if remat == "imaml":  # implicit MAML: no tape across inner steps at all
        algo = imaml.IMAML(model, inner_lr=0.01, inner_steps=steps, lam=2.0, cg_steps=5,
                           tasks_in_parallel=tip)
    else:
        algo = maml.MAML(model, inner_lr=0.01, inner_steps=steps, tasks_in_parallel=tip,
                         remat=remat)
    rng = np.random.default_rng(0)
    t, w = spec["tasks"], spec["ways"]
    s, q = w * spec["shots"], w * spec["queries"]
    batch = {
        "support_x": tf.constant(rng.random((t, s, size, size, channels), np.float32)),
        "support_y": tf.constant(np.tile(np.arange(w), (t, spec["shots"])).astype(np.int32)),
        "query_x": tf.constant(rng.random((t, q, size, size, channels), np.float32)),
        "query_y": tf.constant(np.tile(np.arange(w), (t, spec["queries"])).astype(np.int32)),
    }
    step = tf.function(lambda b: algo.meta_gradients(b)[0])
    concrete = step.get_concrete_function(batch)
    # Tracing can peak higher than a short call: the call's own peak is measured from here.
    traced_peak = _peak_mb()
    reset = memory_budget.reset_peak_rss()
    base = memory_budget.status_mb("VmRSS") or traced_peak
    [g.numpy() for g in concrete(batch)]
    peak = _peak_mb() if reset else max(traced_peak, _peak_mb())
    start = time.perf_counter()
    [g.numpy() for g in concrete(batch)]
    seconds = time.perf_counter() - start
    result = {"peak_rss_mb": round(peak, 1), "base_rss_mb": round(base, 1),
              "tracing_peak_rss_mb": round(traced_peak, 1), "seconds": round(seconds, 3)}
    if tf.config.list_physical_devices("GPU"):
        result["gpu_peak_mb"] = round(
            tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)
    return result


def run_setting(network: str, steps: int, remat: str, tip: str, limit_gb: float) -> dict:
    """Runs one setting in a child process, stopping it before it passes ``limit_gb``."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child",
           f"{network},{steps},{remat},{tip}"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + \
        os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    highest = 0.0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
            highest = max(highest, rss / 1024.0)
        except (OSError, StopIteration):
            pass
        if highest > limit_gb * 1024:
            proc.kill()
            proc.wait()
            return {"stopped": True, "rss_mb_when_stopped": round(highest, 1)}
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {"failed": True, "returncode": proc.returncode, "stderr": err[-2000:]}
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", default="conv4,resnet12")
    parser.add_argument("--remat", default="none,steps")
    parser.add_argument("--tasks_in_parallel", default="1,all")
    parser.add_argument("--tasks", default=None,
                        help="one,together: the same as --tasks_in_parallel 1,all")
    parser.add_argument("--conv4_steps", default="1,5,10,25,50,100")
    parser.add_argument("--resnet12_steps", default="1,3,5,10")
    parser.add_argument("--omniglot_steps", default="1,5,25")
    parser.add_argument("--limit_gb", type=float, default=18.0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        network, steps, remat, tip = args.child.split(",")
        print(json.dumps(child(network, int(steps), remat, tip)))
        return
    if args.tasks:
        names = {"one": "1", "together": "all"}
        unknown = [t for t in args.tasks.split(",") if t not in names]
        if unknown:
            parser.error(f"--tasks takes one and/or together, got {unknown}")
        args.tasks_in_parallel = ",".join(names[t] for t in args.tasks.split(","))
    machine = {"machine": platform.machine(), "cpus": os.cpu_count()}
    for network in args.networks.split(","):
        steps_list = [int(s) for s in getattr(args, f"{network}_steps").split(",")]
        for tip in args.tasks_in_parallel.split(","):
            baseline: dict[int, dict] = {}
            for remat in args.remat.split(","):
                for steps in steps_list:
                    line = {"benchmark": "memory", "network": network, "inner_steps": steps,
                            "remat": remat, "tasks_in_parallel": tip, **NETWORKS[network],
                            **machine}
                    line.update(run_setting(network, steps, remat, tip, args.limit_gb))
                    base = baseline.get(steps)
                    if remat == "none":
                        baseline[steps] = line
                    elif base and "peak_rss_mb" in base and "peak_rss_mb" in line:
                        line["seconds_vs_none"] = round(line["seconds"] / base["seconds"], 3)
                        line["peak_vs_none"] = round(line["peak_rss_mb"] / base["peak_rss_mb"], 3)
                    print(json.dumps(line), flush=True)
                    if line.get("stopped") or line.get("failed"):
                        break  # more steps need more memory: skip the rest of this series


if __name__ == "__main__":
    main()
