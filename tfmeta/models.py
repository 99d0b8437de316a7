"""Standard meta-learning networks as plain, built Keras models (no meta logic)."""

from __future__ import annotations

import keras

from tfmeta.layers import BatchNorm

DType = str | keras.DTypePolicy | None
HEADS = ("mean", "flatten")


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


def omniglot_conv4(
    num_classes: int,
    image_size: int = 28,
    channels: int = 1,
    filters: int = 64,
    *,
    seed: int | None = None,
    dtype: DType = None,
    downsample: str = "stride",
    head: str = "mean",
) -> keras.Model:
    """The MAML Omniglot network (Finn et al., 2017), built.

    Four blocks of [3x3 conv with ``filters`` filters, stride 2, 'same'
    padding; :class:`tfmeta.layers.BatchNorm`; ReLU], a spatial mean (or, with
    ``head="flatten"``, the flattened last feature map: 2x2x64 = 256 features
    for 28x28 inputs, as in the Reptile reference code) and a linear head
    producing ``num_classes`` logits. With ``downsample="maxpool"``
    (the MAML++ network) the convolutions have stride 1 and each block ends in
    2x2 max pooling instead.

    Args:
      num_classes: number of output logits (N ways).
      image_size: input height and width.
      channels: input channels.
      filters: filters per convolution.
      seed: optional seed for deterministic initialisation.
      dtype: optional dtype policy of the layers (e.g. ``"mixed_bfloat16"``);
        None uses the global policy. Weights stay float32 under mixed policies.
      downsample: ``"stride"`` (strided convolutions) or ``"maxpool"``.
      head: ``"mean"`` (average the last feature map over space) or ``"flatten"``.

    Returns:
      A built functional ``keras.Model`` mapping ``[batch, image_size,
      image_size, channels]`` to logits ``[batch, num_classes]``.
    """
    if downsample not in ("stride", "maxpool"):
        raise ValueError(f"downsample must be 'stride' or 'maxpool', got {downsample!r}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {list(HEADS)}, got {head!r}")
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
    return keras.Model(inputs, logits, name="omniglot_conv4")


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
