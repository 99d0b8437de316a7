"""ANIL on Omniglot (Raghu, Raghu, Bengio & Vinyals, 2020): only the head adapts.

Variants ``5way1shot``, ``5way5shot``, ``20way1shot``, ``20way5shot`` (the MAML configs'
hyper-parameters, as in the paper) and ``smoke``::

    python -m tfmeta.train --config=configs/omniglot_anil.py:5way1shot --workdir=/tmp/anil

The inner loop adapts only the last layer (the linear head); the convolutional body is
meta-trained in the outer loop only, through the second-order meta-gradient of the head's
adaptation. Reported: 20-way 1-shot 96.2 +- 0.5, 20-way 5-shot 98.0 +- 0.3 % (the paper gives no
5-way Omniglot numbers).
"""

from tfmeta.run import config as tfmeta_config


def get_config(variant: str = "5way1shot"):
    """Returns the ANIL counterpart of ``omniglot_maml.get_config(variant)``."""
    c = tfmeta_config.sibling_config(__file__, "omniglot_maml.py").get_config(variant)
    c.algorithm = "anil"
    return c
