"""Standard meta-learning networks as plain, built Keras models (no meta logic)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import keras

from tfmeta.base.choices import DOWNSAMPLING, HEADS
from tfmeta.core.layers import BatchNorm

DType = str | keras.DTypePolicy | None


def _head_dtype(dtype: DType) -> DType:
    # Under a mixed policy the output layer computes in float32, as Keras
    # recommends: logits keep full precision for the loss.
    name = dtype.name if isinstance(dtype, keras.DTypePolicy) else dtype
    if name is None:
        name = keras.config.dtype_policy().name
    return "float32" if name.startswith("mixed_") else dtype


def _init(kind: str, seed: int | None, offset: int) -> keras.initializers.Initializer:
    cls = {"glorot": keras.initializers.GlorotUniform, "he": keras.initializers.HeUniform}[kind]
    return cls(seed=None if seed is None else seed + offset)


# 2x2 max pooling four times (floor): 16 -> 8 -> 4 -> 2 -> 1 is the smallest input that keeps a
# non-empty feature map.
MIN_POOLED_IMAGE_SIZE = 16
RESNET12_WIDTHS = (64, 160, 320, 640)


def _check_image_size(image_size: int, what: str) -> None:
    if image_size < MIN_POOLED_IMAGE_SIZE:
        raise ValueError(f"{what} halves the image four times with 2x2 max pooling, so image_size "
                         f"must be >= {MIN_POOLED_IMAGE_SIZE}, got {image_size}")


def conv4(
    num_classes: int,
    image_size: int = 28,
    channels: int = 1,
    filters: int = 64,
    *,
    seed: int | None = None,
    dtype: DType = None,
    downsample: str = "stride",
    head: str = "mean",
    name: str = "conv4",
) -> keras.Model:
    """The four-block convolutional network of MAML (Finn et al., 2017) and its successors, built.

    Four blocks of [3x3 conv with ``filters`` filters, 'same' padding;
    :class:`tfmeta.core.layers.BatchNorm`; ReLU], then a linear head producing ``num_classes`` logits.
    Its variants:

    * Omniglot (MAML): 28x28x1 inputs, 64 filters, stride-2 convolutions, the spatial mean of
      the last feature map (the defaults).
    * Omniglot as in the Reptile reference code: ``head="flatten"`` (2x2x64 = 256 features for
      28x28 inputs).
    * mini-ImageNet / CIFAR-FS (MAML, MAML++): colour inputs (``channels=3``, 84x84 or 32x32), 32
      filters (MAML) or 48 (MAML++), ``downsample="maxpool"`` (stride-1 convolutions, each block
      ending in 2x2 max pooling) and ``head="flatten"``: 84 -> 42 -> 21 -> 10 -> 5, so 5x5x32 =
      800 features for 84x84 inputs, 2x2x32 = 128 for 32x32.

    Args:
      num_classes: number of output logits (N ways).
      image_size: input height and width (>= 16 with ``downsample="maxpool"``).
      channels: input channels (1 grayscale, 3 colour).
      filters: filters per convolution.
      seed: optional seed for deterministic initialisation.
      dtype: optional dtype policy of the layers (e.g. ``"mixed_bfloat16"``);
        None uses the global policy. Weights stay float32 under mixed policies.
      downsample: ``"stride"`` (strided convolutions) or ``"maxpool"``.
      head: ``"mean"`` (average the last feature map over space) or ``"flatten"``.
      name: the Keras model name.

    Returns:
      A built functional ``keras.Model`` mapping ``[batch, image_size,
      image_size, channels]`` to logits ``[batch, num_classes]``.

    Raises:
      ValueError: unknown ``downsample`` or ``head``; an image too small for max pooling.
    """
    if downsample not in DOWNSAMPLING:
        raise ValueError(f"downsample must be one of {list(DOWNSAMPLING)}, got {downsample!r}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {list(HEADS)}, got {head!r}")
    if downsample == "maxpool":
        _check_image_size(image_size, "conv4 with downsample='maxpool'")
    inputs = keras.Input(shape=(image_size, image_size, channels))
    x = inputs
    for i in range(4):
        x = keras.layers.Conv2D(
            filters,
            3,
            strides=2 if downsample == "stride" else 1,
            padding="same",
            kernel_initializer=_init("glorot", seed, i),
            name=f"conv{i}",
            dtype=dtype,
        )(x)
        x = BatchNorm(name=f"bn{i}", dtype=dtype)(x)
        x = keras.layers.ReLU(name=f"relu{i}", dtype=dtype)(x)
        if downsample == "maxpool":
            x = keras.layers.MaxPooling2D(2, name=f"pool{i}", dtype=dtype)(x)
    if head == "mean":
        x = keras.layers.GlobalAveragePooling2D(name="spatial_mean", dtype=dtype)(x)
    else:
        x = keras.layers.Flatten(name="flatten", dtype=dtype)(x)
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=_init("glorot", seed, 4),
        name="logits",
        dtype=_head_dtype(dtype),
    )(x)
    return keras.Model(inputs, logits, name=name)


def omniglot_conv4(num_classes: int, *args: Any, **kwargs: Any) -> keras.Model:
    """:func:`conv4` under its earlier name (the Keras model is still named ``omniglot_conv4``).

    The network, its arguments and its parameters for a given seed are those of :func:`conv4`.
    Training checkpoints key variables by the object graph, not by names, so work directories
    trained under either name restore into the other.
    """
    kwargs.setdefault("name", "omniglot_conv4")
    return conv4(num_classes, *args, **kwargs)


def resnet12(
    num_classes: int,
    image_size: int = 84,
    channels: int = 3,
    widths: Sequence[int] = RESNET12_WIDTHS,
    *,
    seed: int | None = None,
    dtype: DType = None,
    negative_slope: float = 0.1,
    name: str = "resnet12",
) -> keras.Model:
    """ResNet-12, the backbone of MetaOptNet (Lee et al., 2019) and most later few-shot work, built.

    Four residual blocks of widths ``widths`` (64, 160, 320, 640: about 12.4M parameters). Each
    block: three [3x3 conv, 'same' padding, no bias; :class:`tfmeta.core.layers.BatchNorm`;
    LeakyReLU(``negative_slope``)] with no activation after the third batch norm; a shortcut of a
    1x1 conv (no bias) and batch norm; their sum; LeakyReLU; 2x2 max pooling (84 -> 42 -> 21 ->
    10 -> 5, 32 -> 16 -> 8 -> 4 -> 2). Then the spatial mean of the last feature map and a
    linear head producing ``num_classes`` logits. Convolutions have no bias because batch norm
    subtracts it again.

    DropBlock, which MetaOptNet adds to the last two blocks as a training-time regulariser, is
    omitted: this is the network without it (results reported with DropBlock may not be
    reached without it).

    Args:
      num_classes: number of output logits (N ways).
      image_size: input height and width (>= 16).
      channels: input channels (3 colour, 1 grayscale).
      widths: the four blocks' filters.
      seed: optional seed for deterministic initialisation.
      dtype: optional dtype policy of the layers (e.g. ``"mixed_bfloat16"``); None uses the
        global policy. Weights stay float32 under mixed policies; the head computes in float32.
      negative_slope: slope of the LeakyReLUs for negative inputs.
      name: the Keras model name.

    Returns:
      A built functional ``keras.Model`` mapping ``[batch, image_size, image_size, channels]``
      to logits ``[batch, num_classes]``.

    Raises:
      ValueError: ``widths`` not four positive integers; an image smaller than 16.
    """
    widths = tuple(widths)
    if len(widths) != 4 or not all(isinstance(w, numbers.Integral) and not isinstance(w, bool)
                                   and w > 0 for w in widths):
        raise ValueError(f"widths must be four positive integers, got {widths!r}")
    widths = tuple(int(w) for w in widths)
    _check_image_size(image_size, "resnet12")
    inputs = keras.Input(shape=(image_size, image_size, channels))
    x = inputs
    offset = 0  # initialiser seed offset, one per convolution

    def conv(y: Any, width: int, size: int, layer_name: str) -> Any:
        nonlocal offset
        offset += 1
        return keras.layers.Conv2D(width, size, padding="same", use_bias=False,
                                   kernel_initializer=_init("he", seed, offset - 1),
                                   name=layer_name, dtype=dtype)(y)

    for b, width in enumerate(widths):
        block_input = x
        for j in range(3):
            x = conv(x, width, 3, f"block{b}_conv{j}")
            x = BatchNorm(name=f"block{b}_bn{j}", dtype=dtype)(x)
            if j < 2:
                x = keras.layers.LeakyReLU(negative_slope, name=f"block{b}_relu{j}",
                                           dtype=dtype)(x)
        shortcut = conv(block_input, width, 1, f"block{b}_shortcut")
        shortcut = BatchNorm(name=f"block{b}_shortcut_bn", dtype=dtype)(shortcut)
        x = keras.layers.Add(name=f"block{b}_add", dtype=dtype)([x, shortcut])
        x = keras.layers.LeakyReLU(negative_slope, name=f"block{b}_relu", dtype=dtype)(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{b}_pool", dtype=dtype)(x)
    x = keras.layers.GlobalAveragePooling2D(name="spatial_mean", dtype=dtype)(x)
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=_init("glorot", seed, offset),
        name="logits",
        dtype=_head_dtype(dtype),
    )(x)
    return keras.Model(inputs, logits, name=name)


def sinusoid_mlp(
    *, hidden: tuple[int, ...] = (40, 40), seed: int | None = None, dtype: DType = None
) -> keras.Model:
    """The MAML sinusoid regressor: 1 -> 40 -> 40 -> 1 with ReLU, built.

    Args:
      hidden: hidden layer widths.
      seed: optional seed for deterministic initialisation.
      dtype: optional dtype policy of the layers; None uses the global policy.
    """
    inputs = keras.Input(shape=(1,))
    x = inputs
    for i, width in enumerate(hidden):
        x = keras.layers.Dense(
            width,
            activation="relu",
            kernel_initializer=_init("glorot", seed, i),
            name=f"dense{i}",
            dtype=dtype,
        )(x)
    outputs = keras.layers.Dense(
        1,
        kernel_initializer=_init("glorot", seed, len(hidden)),
        name="output",
        dtype=_head_dtype(dtype),
    )(x)
    return keras.Model(inputs, outputs, name="sinusoid_mlp")


def logistic_regression(
    input_dim: int, *, seed: int | None = None, dtype: DType = None
) -> keras.Model:
    """Logistic regression ``sigmoid(w^T x + b)`` as a single ``Dense(1)``, built.

    The model outputs the logit ``w^T x + b`` (shape ``[batch, 1]``); pair it
    with ``loss="binary_crossentropy"`` (labels in {0, 1}, shape ``[batch]``
    or ``[batch, 1]``), which applies the sigmoid inside the loss.

    Args:
      input_dim: number of features.
      seed: optional seed for deterministic initialisation.
      dtype: optional dtype policy of the layer; None uses the global policy.
    """
    inputs = keras.Input(shape=(input_dim,))
    logit = keras.layers.Dense(
        1, kernel_initializer=_init("glorot", seed, 0), name="logit", dtype=dtype
    )(inputs)
    return keras.Model(inputs, logit, name="logistic_regression")
