"""Meta-training throughput of two revisions of tfmeta, measured in one run.

    python benchmarks/compare_revisions.py --base REV [--rounds 3] [--seconds 6] \
        [--workloads a,b,c,d] [--tasks_in_parallel auto]

Checks out ``REV`` into a temporary git worktree and runs ``benchmarks/train_throughput.py`` of
each revision (each with its own code) in alternating fresh processes, round after round, so that
both see the same machine load. Prints one JSON line per round and measurement, then one
``revision_ratio`` line per workload: the median tasks/s of the working tree divided by the
base's (1.0 = unchanged). A refactoring that should not change speed must stay within the
rounds' spread, which each line reports.
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


def _run(tree: str, args: list[str]) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, os.path.join(tree, "benchmarks", "train_throughput.py"),
                           *args], capture_output=True, text=True, env=env, cwd=tree, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"train_throughput.py failed in {tree}:\n{proc.stderr[-3000:]}")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return [r for r in lines if r.get("benchmark") == "train_throughput"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="per workload and process")
    parser.add_argument("--workloads", default="a,b,c,d")
    parser.add_argument("--tasks_in_parallel", default="auto")
    args = parser.parse_args()
    bench = ["--seconds", str(args.seconds), "--rounds", "1", "--workloads", args.workloads,
             "--tasks_in_parallel", args.tasks_in_parallel]
    with tempfile.TemporaryDirectory() as scratch:
        base_tree = os.path.join(scratch, "base")
        subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", base_tree, args.base],
                       check=True, capture_output=True)
        try:
            rates: dict[tuple, dict[str, list[float]]] = {}
            for r in range(args.rounds):
                order = [("base", base_tree), ("head", REPO)]
                for name, tree in (order if r % 2 == 0 else order[::-1]):
                    for result in _run(tree, bench):
                        key = (result["workload"], result["tasks_in_parallel"])
                        rates.setdefault(key, {"base": [], "head": []})[name].append(
                            result["tasks_per_second"])
                        print(json.dumps({"benchmark": "revision_round", "round": r,
                                          "revision": name, "workload": key[0],
                                          "tasks_in_parallel": key[1],
                                          "tasks_per_second": result["tasks_per_second"]}),
                              flush=True)
        finally:
            subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", base_tree],
                           check=False, capture_output=True)
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    for (workload, k), by in sorted(rates.items()):
        base, new = statistics.median(by["base"]), statistics.median(by["head"])
        spread = max(max(v) / min(v) for v in by.values() if v)
        print(json.dumps({"benchmark": "revision_ratio", "workload": workload,
                          "tasks_in_parallel": k, "base": args.base, "head": f"{head}+worktree",
                          "base_tasks_per_second": base, "head_tasks_per_second": new,
                          "ratio_head_over_base": round(new / base, 3),
                          "max_over_min_within_revision": round(spread, 3),
                          "rounds": args.rounds}), flush=True)


if __name__ == "__main__":
    main()
