"""tfmeta: second-order MAML, first-order MAML and Reptile for any Keras 3 model.

Public API::

    import tfmeta
    model = tfmeta.omniglot_conv4(num_classes=5)
    maml = tfmeta.MAML(model, inner_lr=0.4, inner_steps=1)
    fast = maml.adapt(support_x, support_y)
    logits = maml.predict(fast, query_x)
"""

from tfmeta import functional, losses, models, sinusoid
from tfmeta.layers import BatchNorm
from tfmeta.maml import MAML, MetaStep
from tfmeta.models import logistic_regression, omniglot_conv4, sinusoid_mlp
from tfmeta.reptile import Reptile

__version__ = "0.1.0"

__all__ = [
    "MAML",
    "BatchNorm",
    "MetaStep",
    "Reptile",
    "functional",
    "logistic_regression",
    "losses",
    "models",
    "omniglot_conv4",
    "sinusoid",
    "sinusoid_mlp",
]
