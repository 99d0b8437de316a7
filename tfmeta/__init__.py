"""tfmeta: MAML, first-order MAML, MAML++, Meta-SGD, ANIL and Reptile for any Keras 3 model.

Public API::

    import tfmeta
    model = tfmeta.omniglot_conv4(num_classes=5)
    maml = tfmeta.MAML(model, inner_lr=0.4, inner_steps=1)   # tasks_in_parallel="auto"
    fast = maml.adapt(support_x, support_y)
    logits = maml.predict(fast, query_x)
    logits = maml.adapt_and_predict(support_x_b, support_y_b, query_x_b)   # B tasks at once

Names are imported on first use (PEP 562), so ``import tfmeta`` and the binaries
(``python -m tfmeta.train``) do not load TensorFlow before they have set its log level.
"""

from __future__ import annotations

import importlib
from typing import Any

from tfmeta import moved as _moved
from tfmeta.base.version import __version__

_moved.install()

# Public name -> module that defines it (a module name alone: the module itself).
_PUBLIC = {
    "ANIL": "tfmeta.core.maml",
    "MAML": "tfmeta.core.maml",
    "MAMLpp": "tfmeta.core.maml",
    "MetaSGD": "tfmeta.core.maml",
    "Reptile": "tfmeta.core.reptile",
    "IMAML": "tfmeta.core.imaml",
    "MetaLearner": "tfmeta.core.meta_learner",
    "MetaStep": "tfmeta.core.meta_learner",
    "BatchNorm": "tfmeta.core.layers",
    "BatchedModel": "tfmeta.core.batched",
    "unsupported_layers": "tfmeta.core.batched",
    "InnerLoop": "tfmeta.core.inner_loop",
    "minibatch_indices": "tfmeta.core.inner_loop",
    "conv4": "tfmeta.core.models",
    "logistic_regression": "tfmeta.core.models",
    "omniglot_conv4": "tfmeta.core.models",
    "resnet12": "tfmeta.core.models",
    "sinusoid_mlp": "tfmeta.core.models",
    "functional": "tfmeta.core.functional",
    "losses": "tfmeta.core.losses",
    "models": "tfmeta.core.models",
    "sinusoid": "tfmeta.data.sinusoid",
    "image_episodes": "tfmeta.run.tasks",
    "episodes": "tfmeta.data.episodes",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'tfmeta' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name])
    value = module if module.__name__.rsplit(".", 1)[-1] == name else getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
