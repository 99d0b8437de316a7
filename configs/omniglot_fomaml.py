"""First-order MAML on Omniglot: the MAML variants with the second-order term dropped.

Same variants, hyper-parameters and commands as ``configs/omniglot_maml.py``::

    python -m tfmeta.train --config=configs/omniglot_fomaml.py:5way1shot --workdir=/tmp/fomaml

Reported (Nichol et al. 2018, transductive): 5-way 1-shot 98.3 +- 0.5, 5-way 5-shot 99.2 +- 0.2,
20-way 1-shot 89.4 +- 0.5, 20-way 5-shot 97.9 +- 0.1 %.

What was measured with this config, and the commands: docs/results.md.
"""

from tfmeta.run import config as tfmeta_config


def get_config(variant: str = "5way1shot"):
    """Returns the first-order counterpart of ``omniglot_maml.get_config(variant)``."""
    c = tfmeta_config.sibling_config(__file__, "omniglot_maml.py").get_config(variant)
    c.algorithm = "fomaml"
    return c
