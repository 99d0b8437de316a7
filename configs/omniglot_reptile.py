"""Reptile on Omniglot (Nichol, Achiam & Schulman, 2018), with the paper's hyper-parameters.

Variants: ``5way1shot``, ``5way5shot``, ``20way1shot``, ``20way5shot`` and a CPU-sized ``smoke``::

    python -m tfmeta.train --config=configs/omniglot_reptile.py:5way1shot --workdir=/tmp/reptile
    python -m tfmeta.evaluate --workdir=/tmp/reptile --split=test --episodes=600

Paper settings (Omniglot): inner Adam (beta1 = 0) with lr 1e-3, 5 inner iterations (10 for 20-way)
on support minibatches of 10, 10 training shots per class, meta-batch 5, meta step size 1.0 annealed
linearly to 0, 100,000 meta-iterations (200,000 for 20-way), 50 inner iterations at evaluation.
Reported (transductive): 5-way 1-shot 97.68 +- 0.04, 5-way 5-shot 99.48 +- 0.06, 20-way 1-shot
89.43 +- 0.14, 20-way 5-shot 97.12 +- 0.32 %.

As in the reference code (openai/supervised-reptile), each task's minibatches come from its own
shuffles and Adam's state carries over from task to task (``inner.shuffle_per_task``,
``inner.carry_optimizer_state``; see :mod:`tfmeta.core.reptile`): the carried state is what makes
Reptile learn as fast per iteration as the reference. The ablation behind these defaults, with its
commands, is in docs/results.md ("Reptile against its reference code").
"""

from tfmeta.run import config as tfmeta_config

_VARIANTS = {
    # name: (ways, shots, inner_steps, iterations)
    "5way1shot": (5, 1, 5, 100000),
    "5way5shot": (5, 5, 5, 100000),
    "20way1shot": (20, 1, 10, 200000),
    "20way5shot": (20, 5, 10, 200000),
}


def get_config(variant: str = "5way1shot"):
    """Returns the Reptile config for ``variant`` (see the module docstring)."""
    c = tfmeta_config.base_config()
    c.algorithm = "reptile"
    # Queries normalised with the support set's statistics: a prediction never depends on the
    # other queries (see configs/omniglot_maml.py for the measurement behind this default).
    c.inner.bn_mode = "support"
    c.inner.optimizer = "adam"
    c.inner.lr = 1e-3
    c.outer.optimizer = "sgd"
    c.outer.lr = 1.0  # meta step size epsilon
    c.outer.schedule = "linear"
    c.train.meta_batch_size = 5
    # What the reference code does besides the update rule: each task's minibatches shuffled
    # anew, and Adam's state carried from task to task (see tfmeta.core.reptile).
    c.inner.shuffle_per_task = True
    c.inner.carry_optimizer_state = True
    if variant == "smoke":
        tfmeta_config.smoke(c)
        c.data.train_shots = 5
        c.inner.steps, c.inner.eval_steps, c.inner.batch_size = 5, 10, 10
        c.train.meta_batch_size = 4
        return c
    if variant not in _VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {sorted(_VARIANTS) + ['smoke']}")
    ways, shots, inner_steps, iterations = _VARIANTS[variant]
    c.data.ways, c.data.shots, c.data.train_shots, c.data.queries = ways, shots, 10, shots
    c.inner.steps, c.inner.eval_steps, c.inner.batch_size = inner_steps, 50, 10
    c.train.iterations = iterations
    return c
