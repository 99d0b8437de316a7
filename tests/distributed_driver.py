"""Runs tfmeta.run.trainer.train in a fresh process, for tests that need process-level TF settings.

    python tests/distributed_driver.py SPEC_JSON

SPEC_JSON: {"config": "configs/x.py:variant", "overrides": {"train.iterations": 4, ...},
            "workdir": "...", "strategy": "default|mirrored|multiworker",
            "logical_cpus": 2, "synthetic_omniglot": {"image_size": 12}, "dump": "params.npz"}

Logical CPU devices and ``TF_CONFIG`` must be set before TensorFlow initialises, which is why this
runs as its own process. With "dump", the trained model's variables are written to an .npz file
(every worker writes its own, so multi-worker runs can be compared).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from tfmeta.run.config import load_file as load_config


def synthetic_omniglot(image_size: int, num_characters: int = 1623, seed: int = 0):
    """Random uint8 characters in the OmniglotData layout (no real data needed)."""
    from tfmeta.data import omniglot

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_characters, 20, image_size, image_size), dtype=np.uint8)
    names = [f"alphabet{c // 20}/character{c % 20:02d}" for c in range(num_characters)]
    return omniglot.OmniglotData(
        images=images, alphabets=[n.split("/")[0] for n in names], characters=names,
        background=np.arange(num_characters) < 964,
        archives=["images_background" if c < 964 else "images_evaluation"
                  for c in range(num_characters)])


def _dump(exp, path: str) -> None:
    """Writes this worker's in-memory model variables, so workers and runs can be compared."""
    np.savez(path, **{f"{i}:{v.path}": np.asarray(v.numpy())
                      for i, v in enumerate(exp.model.variables)})


def main() -> None:
    spec = json.loads(sys.argv[1])
    import tensorflow as tf
    from absl import logging

    logging.set_verbosity(logging.INFO)  # the trainer's log lines, as the binary shows them

    if spec.get("logical_cpus", 1) > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * spec["logical_cpus"])
    if spec.get("deterministic"):
        tf.config.experimental.enable_op_determinism()
    from tfmeta.base import distribute
    from tfmeta.run import experiment, trainer

    config = load_config(spec["config"], spec.get("overrides", {}))
    data = None
    if "synthetic_omniglot" in spec:
        data = synthetic_omniglot(**spec["synthetic_omniglot"])
    strategy = distribute.make_strategy(spec.get("strategy", "default"))
    exp = experiment.build_experiment(config, strategy, data=data)
    if "dump" in spec:
        _dump(exp, spec["dump"] + ".initial.npz")
    summary = trainer.run(exp, spec["workdir"],
                          final_evaluation=spec.get("final_evaluation", False))
    if "dump" in spec:
        _dump(exp, spec["dump"])
    print(json.dumps({"summary": summary,
                      "replicas": strategy.num_replicas_in_sync}, default=str))


if __name__ == "__main__":
    main()
