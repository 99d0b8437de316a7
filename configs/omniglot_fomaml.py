"""First-order MAML on Omniglot: the MAML variants with the second-order term dropped.

Same variants, hyper-parameters and commands as ``configs/omniglot_maml.py``::

    python -m tfmeta.train --config=configs/omniglot_fomaml.py:5way1shot --workdir=/tmp/fomaml

Reported (Nichol et al. 2018, transductive): 5-way 1-shot 98.3 +- 0.5, 5-way 5-shot 99.2 +- 0.2,
20-way 1-shot 89.4 +- 0.5, 20-way 5-shot 97.9 +- 0.1 %.

Measured on a 2-core x86_64 CPU (no GPU), TensorFlow 2.21: ``5way1shot`` with
``--config.train.iterations=2000`` (1/30 of the schedule, 4 minutes at about 240 tasks/s): test
accuracy 93.73 +- 0.95 % over 600 episodes. The full schedule was not run.
"""

import importlib.util
import os


def _maml_configs():
    # Config files are loaded by path, not as a package, so the sibling is loaded the same way.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "omniglot_maml.py")
    spec = importlib.util.spec_from_file_location("tfmeta_configs_omniglot_maml", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(variant: str = "5way1shot"):
    """Returns the first-order counterpart of ``omniglot_maml.get_config(variant)``."""
    c = _maml_configs().get_config(variant)
    c.algorithm = "fomaml"
    return c
