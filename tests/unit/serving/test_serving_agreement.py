"""One answer per input: every exported signature and in-process adaptation agree.

Checked on models meta-trained briefly on real Omniglot and on real Omniglot queries, for every
algorithm and every training batch-norm mode: random weights hide the defects that matter here (an
Adam inner loop once turned round-off in gradients that are zero in exact arithmetic into
full-size steps that differed between the single, batch and step-count signatures).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import REPO

ATOL = 1e-4  # logits are O(1); the formulations may differ by float32 round-off only

# By default one combination per batch-norm mode, covering both inner optimisers and learned
# per-step rates (Reptile with its Adam inner loop and running statistics was the failing case);
# the whole grid, every algorithm, under -m slow.
_CI = {("reptile", "running"), ("maml", "support"), ("mamlpp", "transductive")}


def _trained_export(tmp_path, data, algorithm: str, bn_mode: str):
    from tests.distributed_driver import load_config
    from tfmeta.run import experiment, exporter, trainer

    config = load_config(os.path.join(REPO, "configs", f"omniglot_{algorithm}.py") + ":smoke")
    config.update_from_flattened_dict({
        "inner.bn_mode": bn_mode, "model.filters": 8, "train.iterations": 20,
        "train.steps_per_loop": 10, "train.eval_every": 0, "train.eval_episodes": 0,
        "train.log_every": 10, "train.checkpoint_every": 20})
    if algorithm == "reptile":
        # Longer than the unrolled limit, so the default signature runs a while loop too.
        config.inner.eval_steps = 12
    exp = experiment.build_experiment(config, tf.distribute.get_strategy(), data=data)
    trainer.run(exp, str(tmp_path / "run"), final_evaluation=False)
    path = exporter.export_experiment(exp, str(tmp_path / "export"))
    return exp, tf.saved_model.load(path)


@pytest.mark.parametrize("algorithm,bn_mode", [
    pytest.param(a, m, marks=() if (a, m) in _CI else pytest.mark.slow)
    for a in ("maml", "fomaml", "mamlpp", "metasgd", "anil", "reptile")
    for m in ("transductive", "support", "running")])
def test_every_signature_gives_the_same_answer(tmp_path, omniglot_small, algorithm, bn_mode):
    exp, loaded = _trained_export(tmp_path, omniglot_small, algorithm, bn_mode)
    learner = exp.algorithm
    serving = "running" if bn_mode == "running" else "support"
    steps = learner.eval_inner_steps
    episodes = exp.source.make_dataset("test", 0, 1, 99, 0, queries=4)
    single = loaded.signatures["adapt_and_predict"]
    sx_b, sy_b, qx_b, expected = [], [], [], []
    for episode in episodes.take(3):
        sx = episode["support_x"][0].numpy()
        sy = episode["support_y"][0].numpy().astype(np.int32)
        qx = episode["query_x"][0].numpy()
        # The export takes images as decoded from PNG (white background): training inputs inverted.
        images, queries = 1.0 - sx, 1.0 - qx
        together = single(support_images=images, support_labels=sy,
                          query_images=queries)["logits"].numpy()
        in_process = learner.adapt_and_predict(sx[None], sy[None], qx[None], steps=steps,
                                               bn_mode=serving)[0].numpy()
        np.testing.assert_allclose(together, in_process, atol=ATOL)
        for j in range(len(queries)):
            alone = single(support_images=images, support_labels=sy,
                           query_images=queries[j:j + 1])["logits"].numpy()[0]
            np.testing.assert_allclose(alone, together[j], atol=ATOL)
        by_steps = loaded.signatures["adapt_and_predict_steps"](
            support_images=images, support_labels=sy, query_images=queries,
            inner_steps=tf.constant(steps))["logits"].numpy()
        np.testing.assert_allclose(by_steps, together, atol=ATOL)
        sx_b.append(images), sy_b.append(sy), qx_b.append(queries), expected.append(together)
    batch = loaded.signatures["adapt_and_predict_batch"](
        support_images=np.stack(sx_b), support_labels=np.stack(sy_b),
        query_images=np.stack(qx_b))["logits"].numpy()
    np.testing.assert_allclose(batch, np.stack(expected), atol=ATOL)
    # The model learned something: the comparison is not between constant answers.
    assert np.ptp(np.stack(expected)) > 0.1
