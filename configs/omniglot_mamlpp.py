"""MAML++ on Omniglot (Antoniou, Edwards & Storkey, 2019, "How to train your MAML").

Variants (``--config=configs/omniglot_mamlpp.py:VARIANT``): ``5way1shot``, ``5way5shot``,
``20way1shot``, ``20way5shot`` and a CPU-sized ``smoke``::

    python -m tfmeta.train --config=configs/omniglot_mamlpp.py:5way1shot --workdir=/tmp/mamlpp
    python -m tfmeta.evaluate --workdir=/tmp/mamlpp --bn_mode=transductive --queries=1

Settings of the paper and its reference code (HowToTrainYourMAMLPytorch, experiment_config/
omniglot_maml++-omniglot_*.json): the conv4 network with 64 filters, stride-1 convolutions and 2x2
max pooling; meta-batch 8; 5 inner steps in training and evaluation; 1 query per class;
100 epochs of 500 iterations (50,000); Adam meta learning rate 1e-3 cosine-annealed to 1e-5.
Each of the five changes to MAML is a switch:

* ``mamlpp.multi_step_loss``: the query loss after every inner step, its weights annealed to
  the last step over ``mamlpp.msl_epochs`` = 10 epochs (then the last step only);
* ``mamlpp.learned_lr``: learned per-layer per-step inner learning rates, initialised to
  ``inner.lr`` = 0.1; batch-norm weights do not adapt in the inner loop (as in the reference);
* ``mamlpp.per_step_bn``: per-step batch-norm weights and statistics;
* ``mamlpp.first_order_iterations``: derivative-order annealing, first-order gradients before
  this iteration (the paper: the first 50 epochs; the reference Omniglot configs switch it off);
* ``outer.schedule = "cosine"`` with ``outer.min_lr``.

As in tfmeta's MAML configs, queries are normalised with the support set's statistics
(``inner.bn_mode="support"``: answers never depend on the other queries); the reference code
normalises them transductively, which ``tfmeta.evaluate --bn_mode=transductive`` reproduces at
evaluation. Reported (test, transductive): 5-way 1-shot 99.47, 5-way 5-shot 99.93, 20-way 1-shot
97.65, 20-way 5-shot 99.33 %. Measured results of tfmeta: docs/results.md.
"""

from tfmeta.run import config as tfmeta_config

_VARIANTS = {"5way1shot": (5, 1), "5way5shot": (5, 5), "20way1shot": (20, 1), "20way5shot": (20, 5)}
ITERATIONS_PER_EPOCH = 500


def get_config(variant: str = "5way1shot"):
    """Returns the MAML++ config for ``variant`` (see the module docstring)."""
    c = tfmeta_config.base_config()
    c.algorithm = "mamlpp"
    c.model.downsample = "maxpool"
    c.inner.bn_mode = "support"
    c.inner.lr, c.inner.steps, c.inner.eval_steps = 0.1, 5, 5
    c.outer.optimizer, c.outer.lr = "adam", 1e-3
    c.outer.schedule, c.outer.min_lr = "cosine", 1e-5
    c.mamlpp.msl_epochs = 10
    c.mamlpp.iterations_per_epoch = ITERATIONS_PER_EPOCH
    c.mamlpp.first_order_iterations = 50 * ITERATIONS_PER_EPOCH
    c.train.meta_batch_size = 8
    c.train.iterations = 100 * ITERATIONS_PER_EPOCH
    if variant == "smoke":
        tfmeta_config.smoke(c)
        c.inner.steps, c.inner.eval_steps = 3, 3
        c.train.meta_batch_size = 4
        c.mamlpp.iterations_per_epoch = 10  # the annealing schedules play out within the run
        c.mamlpp.msl_epochs = 5
        c.mamlpp.first_order_iterations = 100
        return c
    if variant not in _VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {sorted(_VARIANTS) + ['smoke']}")
    c.data.ways, c.data.shots = _VARIANTS[variant]
    c.data.queries = 1
    return c
