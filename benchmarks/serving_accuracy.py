r"""Accuracy of the exported model as it is served: one query per call, on held-out characters.

    python benchmarks/serving_accuracy.py --workdir=RUN [--episodes=600] [--split=test]

Exports the run's newest readable checkpoint with the current code (to a temporary directory),
then, on the same evaluation episodes as ``tfmeta.evaluate`` (``eval.seed``), measures through the
loaded SavedModel:

* ``per_query``: ``adapt_and_predict`` called once per query image (the common serving call);
* ``batch_of_queries``: the same signature with all of an episode's queries in one call (must
  equal ``per_query``: the answers do not depend on the other queries);
* ``transductive``: ``adapt_and_predict_transductive`` with all queries in one call (MAML's
  original protocol, the number comparable with the papers).

Prints one JSON line per protocol: accuracy, 95% CI (1.96 std / sqrt(n)), episodes, queries per
class, inner steps. Images go in as the export's contract wants them (``pixels / 255``, white
background), at the training size, so the graph only inverts them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfmeta.run import experiment, exporter, tasks


def _summary(name: str, per_episode: list[float], extra: dict) -> dict:
    values = np.asarray(per_episode)
    return {"benchmark": "serving_accuracy", "protocol": name,
            "accuracy": round(float(values.mean()), 5),
            "ci95": round(float(1.96 * values.std() / math.sqrt(len(values))), 5),
            "episodes": len(values), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()

    exp = experiment.restore(args.workdir)
    config = exp.config
    with tempfile.TemporaryDirectory() as scratch:
        path = exporter.export_experiment(exp, os.path.join(scratch, "export"))
        loaded = tf.saved_model.load(path)
        meta = exporter.read_metadata(path)
        single = loaded.signatures["adapt_and_predict"]
        transductive = loaded.signatures["adapt_and_predict_transductive"]
        dataset = tasks.distributed_dataset(
            tf.distribute.get_strategy(), exp.source, args.split,
            global_batch_size=config.eval.batch_size, seed=config.eval.seed)
        scores = {"per_query": [], "batch_of_queries": [], "transductive": []}
        max_gap = 0.0
        for batch in dataset:
            for i in range(batch["support_x"].shape[0]):
                if len(scores["per_query"]) == args.episodes:
                    break
                # The pipeline's images are the training representation (strokes bright);
                # the export takes decode_png / 255 (white background) and inverts it.
                sx, qx = 1.0 - batch["support_x"][i], 1.0 - batch["query_x"][i]
                sy, qy = batch["support_y"][i], batch["query_y"][i].numpy()
                kw = dict(support_images=sx, support_labels=sy)
                together = single(**kw, query_images=qx)["logits"].numpy()
                alone = np.concatenate([single(**kw, query_images=qx[j:j + 1])["logits"].numpy()
                                        for j in range(qx.shape[0])])
                trans = transductive(**kw, query_images=qx)["logits"].numpy()
                max_gap = max(max_gap, float(np.abs(alone - together).max()))
                scores["per_query"].append(float(np.mean(alone.argmax(-1) == qy)))
                scores["batch_of_queries"].append(float(np.mean(together.argmax(-1) == qy)))
                scores["transductive"].append(float(np.mean(trans.argmax(-1) == qy)))
            if len(scores["per_query"]) == args.episodes:
                break
    extra = {"workdir": args.workdir, "split": args.split, "ways": config.data.ways,
             "shots": config.data.shots, "queries_per_class": config.data.queries,
             "inner_steps": meta["inner_steps"], "trained_bn_mode": config.inner.bn_mode,
             "serving_bn_mode": meta["serving_bn_mode"], "step": meta["step"]}
    for name, values in scores.items():
        line = _summary(name, values, extra)
        if name != "transductive":
            line["max_abs_logit_gap_alone_vs_together"] = max_gap
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
