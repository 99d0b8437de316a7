"""Meta-SGD on Omniglot (Li, Zhou, Chen & Li, 2017): a learned inner learning rate per parameter.

Variants ``5way1shot``, ``5way5shot``, ``20way1shot``, ``20way5shot`` (the MAML configs' data,
network and meta-batch) and ``smoke``::

    python -m tfmeta.train --config=configs/omniglot_metasgd.py:5way1shot --workdir=/tmp/metasgd

The learned rates (one per scalar parameter, initialised to ``inner.lr``, the MAML paper's value)
are meta-parameters trained with the initialisation; one inner step in training and evaluation,
as in the paper (the learned step is meant to be taken once). Reported: 5-way 1-shot 99.53,
5-way 5-shot 99.93, 20-way 1-shot 95.93, 20-way 5-shot 98.97 %.
"""

from tfmeta.run import config as tfmeta_config


def get_config(variant: str = "5way1shot"):
    """Returns the Meta-SGD counterpart of ``omniglot_maml.get_config(variant)``."""
    c = tfmeta_config.sibling_config(__file__, "omniglot_maml.py").get_config(variant)
    c.algorithm = "metasgd"
    c.inner.steps = c.inner.eval_steps = 1
    return c
