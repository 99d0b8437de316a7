"""What checking a prepared shard store costs on load (see docs/data.md, "Checked on load").

Writes a generated store (``generated:CLASSESxIMAGES`` of random 84x84x3 images, as
``benchmarks/episodes.py`` does; reused when present), then measures, each ``--rounds`` times:

* ``first_load_s``: :func:`tfmeta.data.class_store.load` without a record of earlier checks: every
  shard's size and SHA-256 (what the first run on a store pays once);
* ``later_load_s``: the same load with the record: sizes, and a ``stat`` per shard;
* ``verify_s``: :func:`tfmeta.data.class_store.verify`, every checksum recomputed in one thread.

The files are in the page cache (just written or read); a cold disk adds its read time to the
first load. Prints one JSON line.

Usage:
    python benchmarks/shard_checks.py --source generated:100x600 --prepared_dir /tmp/shards
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from episodes import prepare_generated  # noqa: E402  (a sibling script)

from tfmeta.data import class_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="generated:100x600")
    parser.add_argument("--prepared_dir", default="/tmp/tfmeta_shard_checks")
    parser.add_argument("--image_size", type=int, default=84)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    prepared = prepare_generated(args.source, args.prepared_dir, image_size=args.image_size,
                                 channels=3)
    record = os.path.join(prepared.directory, class_store.VERIFIED_FILE)
    times: dict[str, list[float]] = {"first_load_s": [], "later_load_s": [], "verify_s": []}
    for _ in range(args.rounds):
        if os.path.exists(record):
            os.remove(record)
        for key, run in (("first_load_s", lambda: class_store.load(prepared.directory)),
                         ("later_load_s", lambda: class_store.load(prepared.directory)),
                         ("verify_s", lambda: class_store.verify(prepared))):
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    shards = sum(len(c.shards) for cs in prepared.classes.values() for c in cs)
    size = sum(c.count for cs in prepared.classes.values() for c in cs) * prepared.record_bytes
    print(json.dumps({"source": args.source, "shards": shards, "megabytes": round(size / 2**20),
                      "cpus": os.cpu_count(),
                      **{k: round(min(v), 3) for k, v in times.items()}}))


if __name__ == "__main__":
    main()
