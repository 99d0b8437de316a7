"""The closed sets of names a user picks from, each stated once.

Configs, flags, the algorithms and the exporter all import these tuples, so a new batch-norm mode
or strategy is added in one place. Registries keyed by such names (the experiment's algorithms and
models, the losses) are checked against them by the tests. This module imports nothing.
"""

from __future__ import annotations

# Meta-learning algorithms, as config.algorithm names them.
ALGORITHMS = ("maml", "fomaml", "reptile", "mamlpp", "metasgd", "anil", "imaml")
# Algorithms that are MAML with options of the one inner loop (tfmeta.core.maml).
MAML_FAMILY = ("maml", "fomaml", "mamlpp", "metasgd", "anil")
# Which batch statistics normalise a task's examples: the batch itself (as in MAML's code), the
# support set only (query examples are classified one by one), or the running averages.
BN_MODES = ("transductive", "support", "running")
# Distribution strategies the binaries can build (tfmeta.base.distribute.make_strategy).
STRATEGIES = ("default", "mirrored", "multiworker", "tpu")
INNER_OPTIMIZERS = ("sgd", "adam")
# Learned inner learning rates: none, one per layer and step (MAML++), one per scalar (Meta-SGD).
LEARNED_LR = ("none", "per_layer_step", "per_parameter")
# What adapts in the inner loop: every parameter, or only the head (ANIL).
ADAPT = ("all", "head")
# Rematerialisation of the inner loop in second-order meta-gradients: none (the whole unrolled
# loop is kept for the backward pass), or steps (only each step's state is kept; a step is re-run
# during the backward pass: memory bounded in the number of inner steps).
REMAT = ("none", "steps", "blocks")
# Named values of tasks_in_parallel besides a positive group size.
TASKS_IN_PARALLEL = ("auto", "all")
# Omniglot class splits: MAML's (1200 train / 100 validation / rest test characters), Lake's
# background/evaluation alphabets, and Reptile's (1200 train / 423 test, no validation).
SPLIT_SCHEMES = ("maml", "lake", "reptile")
# Kinds of tasks, as config.task names them.
TASKS = ("omniglot", "sinusoid", "images")
# Networks, as config.model.name names them.
MODELS = ("conv4", "mlp", "resnet12")
# Named losses of the algorithms (tfmeta.core.losses): classification and regression.
LOSSES = ("sparse_categorical_crossentropy", "binary_crossentropy", "mse")
# How prepared images are held: chosen by size, all in memory, or streamed from their shards.
STORAGE = ("auto", "memory", "stream")
# How an image is brought to the model's square size: stretched, or centre-cropped first.
RESIZE = ("stretch", "crop")
# Image channels: grayscale or RGB.
CHANNELS = (1, 3)
OUTER_OPTIMIZERS = ("adam", "sgd")
# Outer learning-rate schedules.
SCHEDULES = ("constant", "linear", "cosine")
# How conv4 halves its feature maps: strided convolutions or 2x2 max pooling.
DOWNSAMPLING = ("stride", "maxpool")
# conv4's head: global mean pooling or flattening.
HEADS = ("mean", "flatten")
DTYPES = ("float32", "bfloat16")
# Omniglot's archives: the full background/evaluation sets or Lake's small ones.
SUBSETS = ("full", "small")
# The splits of classes every class source has.
SPLITS = ("train", "validation", "test")
# The few-shot benchmarks known by name (each with its published class split).
BENCHMARKS = ("miniimagenet", "tieredimagenet", "cifarfs", "fc100", "cub")
