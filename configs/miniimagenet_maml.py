"""Second-order MAML on mini-ImageNet (Finn et al., 2017), with the paper's hyper-parameters.

Variants (``--config=configs/miniimagenet_maml.py:VARIANT``):

=========  =====================================================================================
5way1shot  meta-batch 4, inner lr 0.01, 5 inner steps (10 at evaluation), 15 queries per class,
           60,000 iterations.  Paper: 48.70 +- 1.84 %.
5way5shot  as 5way1shot with 5 shots and meta-batch 2.  Paper: 63.11 +- 0.92 %.
resnet12_5way5shot
           as 5way5shot with the ResNet-12 backbone (``model.name="resnet12"``, about 12.4M
           parameters) instead of conv4, still second order with 5 inner steps. Its meta-gradient
           does not fit in memory with the unrolled tape, so ``inner.remat="blocks"``: each inner
           step and each residual block is recomputed during the backward pass (same gradients,
           more time per meta-gradient; docs/algorithms.md, docs/performance.md), and tasks are
           computed one at a time (``train.tasks_in_parallel="1"``: a group multiplies the
           activations). No published MAML figure for this pairing.
smoke      5-way 1-shot, a few hundred iterations of a narrow network at 32x32: a CPU check of
           train -> evaluate -> export on your copy of the data, not a result.
=========  =====================================================================================

Point ``data.source`` at your copy (the pickle caches ``mini-imagenet-cache-{train,val,test}.pkl``,
Ravi & Larochelle's split CSVs with an ``images/`` folder, or ``train/ val/ test/`` class folders;
see docs/data.md)::

    python -m tfmeta.train --config=configs/miniimagenet_maml.py:5way1shot \\
        --config.data.source=miniimagenet:/data/mini-imagenet --workdir=/tmp/mini5w1s
    python -m tfmeta.evaluate --workdir=/tmp/mini5w1s --split=test --episodes=600

Common to the paper variants: 84x84 RGB images (pixels / 255, no normalisation, no augmentation,
as in cbfinn/maml), the conv4 network with 32 filters, 3x3 convolutions, batch norm, ReLU and 2x2
max pooling and a flattened head (5x5x32 = 800 features); Adam meta learning rate 1e-3; the
Ravi & Larochelle class split (64 / 16 / 20 classes, 600 images each), shipped with tfmeta.
Batch norm: queries are normalised with the support set's statistics
(``inner.bn_mode="support"``, as in tfmeta's Omniglot configs; the paper's transductive setting is
``--config.inner.bn_mode=transductive``). On one GPU the paper's 60,000 iterations take about a
day; on CPU only the smoke variant is practical. Measured results: docs/results.md.
"""

from tfmeta.run import config as tfmeta_config

DEFAULT_SOURCE = "miniimagenet:~/data/mini-imagenet"
_VARIANTS = {
    # name: (ways, shots, meta_batch)
    "5way1shot": (5, 1, 4),
    "5way5shot": (5, 5, 2),
}


def colour_maml(c, *, source: str, image_size: int):
    """The MAML paper's mini-ImageNet setup on any colour source (shared by the colour configs)."""
    c.algorithm = "maml"
    c.task = "images"
    c.data.source = source
    c.data.image_size, c.data.channels = image_size, 3
    c.data.rotate = False
    c.data.queries = 15
    c.model.name, c.model.filters = "conv4", 32
    c.model.downsample, c.model.head = "maxpool", "flatten"
    c.inner.bn_mode = "support"
    c.inner.lr, c.inner.steps, c.inner.eval_steps = 0.01, 5, 10
    c.outer.optimizer, c.outer.lr = "adam", 1e-3
    c.train.iterations = 60000
    c.train.eval_every = 2000
    c.train.eval_episodes = 100
    c.eval.batch_size = 4
    return c


def smoke(c):
    """Shrinks a colour config to a CPU-sized end-to-end run (not a result)."""
    c.data.image_size = 32
    c.data.ways, c.data.shots, c.data.queries = 5, 1, 5
    c.model.filters = 16
    c.inner.steps, c.inner.eval_steps = 1, 3
    c.inner.lr = 0.1
    c.train.meta_batch_size = 4
    c.train.iterations = 200
    c.train.steps_per_loop = 10
    c.train.log_every = 50
    c.train.checkpoint_every = 100
    c.train.eval_every = 100
    c.train.eval_episodes = 20
    c.eval.episodes = 100
    c.eval.batch_size = 10
    return c


def get_config(variant: str = "5way1shot"):
    """Returns the config for ``variant`` (see the module docstring)."""
    c = colour_maml(tfmeta_config.base_config(), source=DEFAULT_SOURCE, image_size=84)
    if variant == "smoke":
        return smoke(c)
    if variant == "resnet12_5way5shot":
        c.data.ways, c.data.shots, c.train.meta_batch_size = _VARIANTS["5way5shot"]
        return resnet12_second_order(c)
    if variant not in _VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: "
                         f"{sorted(_VARIANTS) + ['resnet12_5way5shot', 'smoke']}")
    c.data.ways, c.data.shots, c.train.meta_batch_size = _VARIANTS[variant]
    return c


def resnet12_second_order(c):
    """ResNet-12 in place of conv4, with the meta-gradient recomputed block by block."""
    defaults = tfmeta_config.base_config().model
    c.model.name = "resnet12"
    c.model.filters, c.model.downsample, c.model.head = (
        defaults.filters, defaults.downsample, defaults.head)  # conv4-only fields
    c.inner.remat = "blocks"
    c.train.tasks_in_parallel = "1"
    return c
