"""tfmeta: MAML, first-order MAML, MAML++, Meta-SGD, ANIL and Reptile for any Keras 3 model.

Public API::

    import tfmeta
    model = tfmeta.omniglot_conv4(num_classes=5)
    maml = tfmeta.MAML(model, inner_lr=0.4, inner_steps=1)   # tasks_in_parallel="auto"
    fast = maml.adapt(support_x, support_y)
    logits = maml.predict(fast, query_x)
    logits = maml.adapt_and_predict(support_x_b, support_y_b, query_x_b)   # B tasks at once
"""

from tfmeta import functional, losses, models, sinusoid
from tfmeta.batched import BatchedModel, unsupported_layers
from tfmeta.inner_loop import InnerLoop, minibatch_indices
from tfmeta.layers import BatchNorm
from tfmeta.maml import ANIL, MAML, MAMLpp, MetaSGD
from tfmeta.meta_learner import MetaLearner, MetaStep
from tfmeta.models import logistic_regression, omniglot_conv4, sinusoid_mlp
from tfmeta.reptile import Reptile
from tfmeta.version import __version__


__all__ = [
    "ANIL",
    "MAML",
    "BatchNorm",
    "BatchedModel",
    "InnerLoop",
    "MAMLpp",
    "MetaLearner",
    "MetaSGD",
    "MetaStep",
    "Reptile",
    "functional",
    "logistic_regression",
    "losses",
    "minibatch_indices",
    "models",
    "omniglot_conv4",
    "sinusoid",
    "sinusoid_mlp",
    "unsupported_layers",
]
