"""Second-order MAML on Omniglot (Finn et al., 2017), with the paper's hyper-parameters.

Variants (select with ``--config=configs/omniglot_maml.py:VARIANT``):

=========  =====================================================================================
5way1shot  meta-batch 32, inner lr 0.4, 1 inner step (3 at evaluation), 60,000 iterations.
           Paper: 98.7 +- 0.4 %.
5way5shot  as 5way1shot with 5 shots.  Paper: 99.9 +- 0.1 %.
20way1shot meta-batch 16, inner lr 0.1, 5 inner steps (5 at evaluation).  Paper: 95.8 +- 0.3 %.
20way5shot as 20way1shot with 5 shots.  Paper: 98.9 +- 0.2 %.
smoke      5-way 1-shot on the small archives with a narrow network for a couple of hundred
           iterations: a CPU end-to-end check of train -> evaluate -> export, not a result.
=========  =====================================================================================

Exact command (any field can be overridden, e.g. ``--config.train.iterations=1000``)::

    python -m tfmeta.train --config=configs/omniglot_maml.py:5way1shot --workdir=/tmp/maml5w1s
    python -m tfmeta.evaluate --workdir=/tmp/maml5w1s --split=test --episodes=600

Common to all paper variants: 28x28 images, each sampled class rotated by a random multiple of 90
degrees, 'maml' character split (1100 train / 100 validation / 423 test), Adam meta learning rate
1e-3, query examples per class equal to the shots.

Batch norm: unlike the paper, queries are normalised with the support set's statistics under the
adapted weights (``inner.bn_mode="support"``), so a query's prediction never depends on the other
queries, in training, evaluation and serving alike; the exported model answering one query per
call is better for it (``benchmarks/serving_accuracy.py`` measures it).
``--config.inner.bn_mode=transductive`` restores the paper's setting.

What was measured with this config (the batch-norm comparison, 5-way and 20-way 1-shot, the smoke
variant), and the commands: docs/results.md.
"""

from tfmeta.run import config as tfmeta_config

_VARIANTS = {
    # name: (ways, shots, meta_batch, inner_lr, inner_steps, eval_steps)
    "5way1shot": (5, 1, 32, 0.4, 1, 3),
    "5way5shot": (5, 5, 32, 0.4, 1, 3),
    "20way1shot": (20, 1, 16, 0.1, 5, 5),
    "20way5shot": (20, 5, 16, 0.1, 5, 5),
}


def get_config(variant: str = "5way1shot"):
    """Returns the config for ``variant`` (see the module docstring)."""
    c = tfmeta_config.base_config()
    c.algorithm = "maml"
    c.inner.bn_mode = "support"  # non-transductive: see the module docstring
    if variant == "smoke":
        return smoke(c)
    if variant not in _VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {sorted(_VARIANTS) + ['smoke']}")
    ways, shots, meta_batch, inner_lr, inner_steps, eval_steps = _VARIANTS[variant]
    c.data.ways, c.data.shots, c.data.queries = ways, shots, shots
    c.train.meta_batch_size = meta_batch
    c.inner.lr, c.inner.steps, c.inner.eval_steps = inner_lr, inner_steps, eval_steps
    c.outer.optimizer, c.outer.lr = "adam", 1e-3
    c.train.iterations = 60000
    return c


def smoke(c):
    """Shrinks a config to a CPU-sized end-to-end run on the small archives."""
    tfmeta_config.smoke(c)
    c.inner.lr, c.inner.steps, c.inner.eval_steps = 0.4, 1, 3
    c.train.meta_batch_size = 8
    return c
