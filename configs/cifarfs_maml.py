"""Second-order MAML on CIFAR-FS (Bertinetto et al., 2019), the mini-ImageNet recipe at 32x32.

Variants (``--config=configs/cifarfs_maml.py:VARIANT``): ``5way1shot`` (meta-batch 4),
``5way5shot`` (meta-batch 2), and a CPU-sized ``smoke``::

    python -m tfmeta.train --config=configs/cifarfs_maml.py:5way1shot --workdir=/tmp/cifarfs

CIFAR-FS is CIFAR-100 with Bertinetto et al.'s class split (64 / 16 / 20 classes of 600 images),
shipped with tfmeta; the images are read through TFDS's ``cifar100`` (prepared once; offline, put
``cifar-100-binary.tar.gz``, the binary version TFDS reads, not the python one, in
``<data_dir>/downloads/manual/``, see docs/data.md). Everything else is the MAML paper's
mini-ImageNet setup (configs/miniimagenet_maml.py): conv4 with 32 filters, 2x2 max pooling and a
flattened head (2x2x32 = 128 features), inner lr 0.01, 5 inner steps (10 at evaluation), 15 queries
per class, Adam 1e-3, 60,000 iterations. Bertinetto et al. report MAML at 58.9 +- 1.9 % (1-shot)
and 71.5 +- 1.0 % (5-shot) with a wider network. ``--config.data.source=fc100`` gives FC100
(Oreshkin et al., 2018: CIFAR-100 superclasses 12 / 4 / 4) with the same recipe.
"""


from tfmeta.run import config as tfmeta_config

_mini = tfmeta_config.sibling_config(__file__, "miniimagenet_maml.py")


def get_config(variant: str = "5way1shot"):
    """Returns the config for ``variant`` (see the module docstring)."""
    c = _mini.colour_maml(tfmeta_config.base_config(), source="cifarfs", image_size=32)
    if variant == "smoke":
        _mini.smoke(c)
        return c
    if variant not in _mini._VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: "
                         f"{sorted(_mini._VARIANTS) + ['smoke']}")
    c.data.ways, c.data.shots, c.train.meta_batch_size = _mini._VARIANTS[variant]
    return c


