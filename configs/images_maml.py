"""MAML on your own images: a folder of class folders, any TFDS image dataset, or a benchmark.

One command from a folder of photos (``/path/to/photos/<class>/<image>``, any size and format) to
a trained and exported model::

    python -m tfmeta.train --config=configs/images_maml.py \\
        --config.data.source=folder:/path/to/photos --workdir=/tmp/photos

Variants (``--config=configs/images_maml.py:VARIANT``):

=========  =====================================================================================
default    5-way 1-shot second-order MAML at 84x84 RGB (the MAML paper's mini-ImageNet network:
           conv4, 32 filters, max pooling, flattened head; inner lr 0.01, 5 inner steps, 10 at
           evaluation; meta-batch 4; 15 queries per class), per-channel normalisation measured on
           the meta-train classes, random crop (4 px padding) and flip in meta-training,
           20,000 iterations.
smoke      the same at 32x32 with a narrow network for 200 iterations: about two minutes on
           2 CPU cores, preparation and export included. It checks the data and the pipeline;
           it is not a result.
=========  =====================================================================================

The classes are split 64 / 16 / 20 % into meta-train / validation / test with
``data.split_seed`` (or by your split folders ``train/ val/ test/``, or by class-list files with
``--config.data.class_lists=DIR``). The images are prepared once (decoded, converted to RGB and
resized) into per-class shards under ``<TFDS data dir>/tfmeta_prepared``; unreadable, non-image
and too-small files are skipped and listed with their reasons in ``WORKDIR/data_summary.json``.
A class needs ``shots + queries`` images (16 here, 6 in the smoke variant); smaller classes are
left out and listed there too. docs/data.md has the details.
"""

from tfmeta.run import config as tfmeta_config

_mini = tfmeta_config.sibling_config(__file__, "miniimagenet_maml.py")
DEFAULT_SOURCE = "folder:~/photos"


def get_config(variant: str = "default"):
    """Returns the config for ``variant`` (see the module docstring)."""
    c = _mini.colour_maml(tfmeta_config.base_config(), source=DEFAULT_SOURCE, image_size=84)
    c.data.normalize = True
    c.data.augment, c.data.crop_padding = True, 4
    c.data.ways, c.data.shots = 5, 1
    c.train.meta_batch_size = 4
    c.train.iterations = 20000
    if variant == "smoke":
        _mini.smoke(c)
        c.data.crop_padding = 2
        return c
    if variant != "default":
        raise ValueError(f"unknown variant {variant!r}; allowed: ['default', 'smoke']")
    return c
