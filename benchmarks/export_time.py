"""Time to export a trained run as a fast-adaptation SavedModel, against a base revision.

    python benchmarks/export_time.py [--workdir DIR] [--base REV] [--rounds 2]

Exports the run in ``--workdir`` (default: a fresh ``configs/omniglot_maml.py:smoke`` run of two
iterations, the export's cost does not depend on training length; needs the Omniglot archives as
``TFMETA_OMNIGLOT_ARCHIVES``) with this working tree's code and with the code of ``--base``
(extracted with ``git archive``), in alternating fresh processes, round after round, so that both
see the same machine load. Each process prints its phases in seconds: ``import`` (TensorFlow and
tfmeta), ``restore`` (rebuilding the experiment from the checkpoint), ``export`` (building,
tracing and saving the SavedModel). Prints one JSON line per round and revision, then one
``export_time_ratio`` line: the median export seconds of each and their ratio, with the 1-minute
load average seen during the run (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a fresh process with one revision's code first on the path.
_CHILD = """
import json, os, sys, tempfile, time
start = time.perf_counter()
import tensorflow as tf
try:
    from tfmeta.run import experiment, exporter
except ImportError:  # the flat layout of releases before 0.3
    from tfmeta import experiment, exporter
imported = time.perf_counter()
workdir = sys.argv[1]
exp = experiment.restore(workdir)
restored = time.perf_counter()
with tempfile.TemporaryDirectory() as scratch:
    exporter.export_experiment(exp, os.path.join(scratch, "export"), workdir=workdir)
exported = time.perf_counter()
print(json.dumps({"import": imported - start, "restore": restored - imported,
                  "export": exported - restored, "load_1min": os.getloadavg()[0]}))
"""


def _measure(tree: str, workdir: str) -> dict:
    env = dict(os.environ, PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _CHILD, workdir], capture_output=True,
                          text=True, env=env, cwd=tree, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the export failed with the code in {tree}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _smoke_run(scratch: str) -> str:
    workdir = os.path.join(scratch, "smoke")
    subprocess.run([sys.executable, "-m", "tfmeta.train",
                    f"--config={os.path.join(REPO, 'configs', 'omniglot_maml.py')}:smoke",
                    "--config.train.iterations=2", f"--workdir={workdir}", "--noexport"],
                   env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2"), cwd=REPO,
                   check=True, capture_output=True)
    return workdir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", help="a trained run (default: a fresh 2-iteration smoke run)")
    parser.add_argument("--base", default="ee9a130", help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or _smoke_run(scratch)
        base_tree = os.path.join(scratch, "base")
        os.makedirs(base_tree)
        archive = subprocess.run(["git", "-C", REPO, "archive", args.base, "tfmeta"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", base_tree], input=archive, check=True)
        seconds: dict[str, list[float]] = {"base": [], "head": []}
        loads = []
        for r in range(args.rounds):
            order = [("base", base_tree), ("head", REPO)]
            for name, tree in (order if r % 2 == 0 else order[::-1]):
                phases = _measure(tree, workdir)
                seconds[name].append(phases["export"])
                loads.append(phases["load_1min"])
                print(json.dumps({"benchmark": "export_time", "round": r, "revision": name,
                                  **{k: round(v, 2) for k, v in phases.items()}}), flush=True)
    base, head = statistics.median(seconds["base"]), statistics.median(seconds["head"])
    print(json.dumps({"benchmark": "export_time_ratio", "base": args.base,
                      "base_export_seconds": round(base, 2),
                      "head_export_seconds": round(head, 2),
                      "ratio_head_over_base": round(head / base, 3), "rounds": args.rounds,
                      "load_1min_min": round(min(loads), 2),
                      "load_1min_max": round(max(loads), 2)}), flush=True)


if __name__ == "__main__":
    main()
