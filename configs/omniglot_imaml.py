"""Implicit MAML on Omniglot (Rajeswaran, Finn, Kakade & Levine, 2019), the reference settings.

Variants ``5way1shot`` (the reference code's Omniglot command: inner lr 0.1, 16 inner steps,
lambda 2.0, 5 conjugate-gradient steps, meta-batch 32, Adam 1e-3, the flattened 2x2x64 head),
``20way1shot`` (the same with 20 ways and meta-batch 16) and ``smoke``::

    python -m tfmeta.train --config=configs/omniglot_imaml.py:5way1shot --workdir=/tmp/imaml
    python -m tfmeta.evaluate --workdir=/tmp/imaml --split=test --episodes=600

Paper (iMAML-GD / iMAML-HF): 5-way 1-shot 99.16 +- 0.35 / 99.50 +- 0.26 %, 20-way 1-shot
94.46 +- 0.42 / 96.18 +- 0.36 %. The reference code damps the CG system
(``2 v + H v / (lambda + 1)``); tfmeta solves the paper's ``v + H v / lambda`` undamped, and adapts
with the proximal term in evaluation and serving too (the reference evaluates without it).
Batch norm normalises queries with the support set's statistics (``inner.bn_mode="support"``),
as the MAML configs do.
"""

from tfmeta.run import config as tfmeta_config

_VARIANTS = {"5way1shot": (5, 32), "20way1shot": (20, 16)}  # name: (ways, meta-batch)


def get_config(variant: str = "5way1shot"):
    """Returns the config for ``variant`` (see the module docstring)."""
    c = tfmeta_config.sibling_config(__file__, "omniglot_maml.py").get_config(
        "smoke" if variant == "smoke" else "5way1shot")
    c.algorithm = "imaml"
    c.imaml.lam, c.imaml.cg_steps = 2.0, 5
    if variant == "smoke":
        c.inner.lr, c.inner.steps, c.inner.eval_steps = 0.1, 4, 4
        return c
    if variant not in _VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {sorted(_VARIANTS) + ['smoke']}")
    ways, meta_batch = _VARIANTS[variant]
    c.data.ways = ways
    c.train.meta_batch_size = meta_batch
    c.inner.lr, c.inner.steps, c.inner.eval_steps = 0.1, 16, 16
    c.model.head = "flatten"
    return c
