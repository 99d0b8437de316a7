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

from tfmeta.version import __version__

# Public name -> module that defines it (a module name alone: the module itself).
_PUBLIC = {
    "ANIL": "tfmeta.maml",
    "MAML": "tfmeta.maml",
    "MAMLpp": "tfmeta.maml",
    "MetaSGD": "tfmeta.maml",
    "Reptile": "tfmeta.reptile",
    "IMAML": "tfmeta.imaml",
    "MetaLearner": "tfmeta.meta_learner",
    "MetaStep": "tfmeta.meta_learner",
    "BatchNorm": "tfmeta.layers",
    "BatchedModel": "tfmeta.batched",
    "unsupported_layers": "tfmeta.batched",
    "InnerLoop": "tfmeta.inner_loop",
    "minibatch_indices": "tfmeta.inner_loop",
    "conv4": "tfmeta.models",
    "logistic_regression": "tfmeta.models",
    "omniglot_conv4": "tfmeta.models",
    "resnet12": "tfmeta.models",
    "sinusoid_mlp": "tfmeta.models",
    "functional": "tfmeta.functional",
    "losses": "tfmeta.losses",
    "models": "tfmeta.models",
    "sinusoid": "tfmeta.sinusoid",
    "image_episodes": "tfmeta.tasks",
    "episodes": "tfmeta.episodes",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'tfmeta' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name])
    value = module if module.__name__ == f"tfmeta.{name}" else getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
