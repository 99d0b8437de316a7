"""A Keras model run on many tasks at once, each task with its own weights.

MAML adapts a copy of the weights per task, so the tasks of a meta-batch cannot share one forward
pass of the model: calling ``model.stateless_call`` once per task runs every op on one task's 5-80
small images, which leaves a GPU or TPU mostly idle. :class:`BatchedModel` instead evaluates the
model's layer graph with weights that carry a leading task axis ``T``:

* ``Conv2D``: the tasks are folded into the channel axis, ``[N, H, W, T*C]``, and one grouped
  convolution (``feature_group_count = T``) applies task ``t``'s filters to task ``t``'s channels.
  Where TensorFlow has no grouped-convolution gradient (float64 on CPU, and float32 on CPU
  builds without oneDNN's kernels) an equivalent im2col formulation (strided slices and one
  batched matmul) is used instead.
* ``Dense``: one batched matmul ``[T, M, C] @ [T, C, F]``.
* :class:`tfmeta.core.layers.BatchNorm`: moments per task, with the same formula as the layer.
* Layers without weights (activations, pooling, flatten/reshape, merges, ...) run on the tasks
  folded into the batch, or directly on the channel-folded layout where that is the same thing
  (element-wise and spatial layers), so a conv stack stays in one layout without transposes.

Functional and Sequential models (nested too) are supported; anything else is reported by
:func:`unsupported_layers`, and the meta-learners then fall back to one task at a time.
Activations between layers are kept either "task-major" ``[T, N, ...]`` or "channel-folded"
``[N, ..., T*C]``; each layer converts only when it needs the other layout.
"""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tfmeta.core import layers as tfm_layers

TASK_MAJOR, CHANNELS = "task_major", "channels"

# Layers without weights whose output for one example depends on that example only.
_ELEMENTWISE = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
                keras.layers.Identity, keras.layers.Add, keras.layers.Subtract,
                keras.layers.Multiply, keras.layers.Average, keras.layers.Maximum,
                keras.layers.Minimum)
_SPATIAL = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
            keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D,
            keras.layers.ZeroPadding2D, keras.layers.Cropping2D, keras.layers.UpSampling2D)
_PER_EXAMPLE = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Permute,
                keras.layers.Softmax, keras.layers.Concatenate, keras.layers.Activation,
                keras.layers.InputLayer)
# Activation functions that act on each element alone, so any layout may be used.
_ELEMENTWISE_ACTIVATIONS = {
    getattr(keras.activations, name) for name in (
        "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "sigmoid", "hard_sigmoid",
        "tanh", "softplus", "softsign", "silu", "swish", "hard_silu", "hard_swish", "mish",
        "exponential") if hasattr(keras.activations, name)}
SUPPORTED_LAYERS = ("Conv2D", "Dense", "tfmeta.core.layers.BatchNorm") + tuple(
    c.__name__ for c in _ELEMENTWISE + _SPATIAL + _PER_EXAMPLE)


def _channels_last(layer: keras.Layer) -> bool:
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _why_unsupported(layer: keras.Layer) -> str | None:
    """None if ``layer`` can run batched, else the reason."""
    if isinstance(layer, (keras.Sequential, keras.Model)):
        if isinstance(layer, keras.Sequential) or _is_functional(layer):
            return None
        return "a subclassed model (its call() cannot be traced per layer)"
    if isinstance(layer, keras.layers.Conv2D) and type(layer) is keras.layers.Conv2D:
        if layer.groups != 1:
            return "Conv2D with groups > 1"
        if not _channels_last(layer):
            return "Conv2D with data_format='channels_first'"
        return None
    if type(layer) is keras.layers.Dense:
        return None
    if isinstance(layer, tfm_layers.BatchNorm):
        return None
    if isinstance(layer, _ELEMENTWISE + _SPATIAL + _PER_EXAMPLE):
        if layer.weights:
            return "has weights"
        if isinstance(layer, _SPATIAL) and not _channels_last(layer):
            return "data_format='channels_first'"
        return None
    return "not one of the layers that run batched (see tfmeta.core.batched.SUPPORTED_LAYERS)"


def _is_functional(model: keras.Model) -> bool:
    return hasattr(model, "_run_through_graph") and hasattr(model, "_nodes_by_depth")


def _sublayers(model: keras.Model) -> list[keras.Layer]:
    if isinstance(model, keras.Sequential):
        return list(model.layers)
    return [op for op in model.operations]


def unsupported_layers(model: keras.Layer) -> list[str]:
    """Names (with reasons) of the layers that prevent running ``model`` batched; empty if none."""
    found = []
    reason = _why_unsupported(model) if isinstance(model, keras.Model) else None
    if reason:
        return [f"{model.name} ({type(model).__name__}: {reason})"]
    for layer in _sublayers(model):
        reason = _why_unsupported(layer)
        if reason:
            found.append(f"{layer.name} ({type(layer).__name__}: {reason})")
        elif isinstance(layer, keras.Model):
            found += unsupported_layers(layer)
    return found


class _Act:
    """An activation of all tasks, in one of two layouts (see the module docstring)."""

    def __init__(self, value: tf.Tensor, layout: str):
        self.value = value
        self.layout = layout


def _shape(x: tf.Tensor) -> list[Any]:
    """Static dimensions where known, dynamic ones (scalars) where not."""
    static = x.shape.as_list()
    dynamic = tf.unstack(tf.shape(x)) if None in static else None
    return [d if d is not None else dynamic[i] for i, d in enumerate(static)]


def _to(act: _Act, layout: str) -> tf.Tensor:
    x = act.value
    if act.layout == layout:
        return x
    rank = len(x.shape)
    if layout == CHANNELS:  # [T, N, d..., C] -> [N, d..., T*C]
        s = _shape(x)
        x = tf.transpose(x, [1, *range(2, rank - 1), 0, rank - 1])
        return tf.reshape(x, [*s[1:-1], -1])
    # [N, d..., T*C] -> [T, N, d..., C]
    s = _shape(x)
    channels = act.channels
    x = tf.reshape(x, [*s[:-1], -1, channels])
    return tf.transpose(x, [rank - 1, *range(rank - 1), rank])


def _make(value: tf.Tensor, layout: str, channels: int | None = None) -> _Act:
    act = _Act(value, layout)
    act.channels = channels if channels is not None else value.shape[-1]
    return act


def _fold(x: tf.Tensor) -> tuple[tf.Tensor, list[Any]]:
    """``[T, N, ...] -> [T*N, ...]``, and the leading dims to unfold with."""
    s = _shape(x)
    return tf.reshape(x, [-1, *s[2:]]), s[:2]


def _unfold(x: tf.Tensor, lead: list[Any]) -> tf.Tensor:
    return tf.reshape(x, [*lead, *_shape(x)[1:]])


def _same_padding(size: Any, kernel: int, stride: int, dilation: int) -> tuple[Any, Any]:
    """TensorFlow's SAME padding of one axis: (before, after)."""
    effective = (kernel - 1) * dilation + 1
    out = (size + stride - 1) // stride
    total = tf.maximum((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _conv_patches(x: tf.Tensor, kernel: tf.Tensor, layer: keras.layers.Conv2D) -> tf.Tensor:
    """Per-task convolution by im2col: ``x [T, N, H, W, C]``, ``kernel [T, kh, kw, C, F]``.

    Made of pads, strided slices and one batched matmul, all of which differentiate to any order
    in every dtype (TensorFlow lacks float64 grouped-convolution gradients on CPU).
    """
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
    folded, lead = _fold(x)
    if layer.padding == "same":
        h, w = _shape(folded)[1:3]
        ph, pw = _same_padding(h, kh, sh, dh), _same_padding(w, kw, sw, dw)
        folded = tf.pad(folded, [[0, 0], list(ph), list(pw), [0, 0]])
    h, w = _shape(folded)[1:3]
    out_h = (h - (kh - 1) * dh - 1) // sh + 1
    out_w = (w - (kw - 1) * dw - 1) // sw + 1
    patches = []
    for i in range(kh):
        for j in range(kw):
            patches.append(folded[:, i * dh: i * dh + (out_h - 1) * sh + 1: sh,
                                  j * dw: j * dw + (out_w - 1) * sw + 1: sw, :])
    cols = tf.concat(patches, axis=-1)  # [T*N, H', W', kh*kw*C], (i, j, c) order as the kernel
    cols = tf.reshape(cols, [lead[0], -1, cols.shape[-1]])
    k = tf.reshape(kernel, [lead[0], -1, kernel.shape[-1]])  # [T, kh*kw*C, F]
    y = tf.matmul(cols, k)  # [T, N*H'*W', F]
    return tf.reshape(y, [*lead, out_h, out_w, kernel.shape[-1]])


@functools.lru_cache(maxsize=None)
def cpu_grouped_conv_gradients() -> bool:
    """Whether this CPU build of TensorFlow differentiates grouped convolutions (float32).

    Only oneDNN's kernels do: TensorFlow's own ``Conv2DBackpropInput`` / ``Filter`` refuse groups
    on CPU ("Gradients for grouped convolutions are not supported on CPU"), and TensorFlow turns
    oneDNN on by default only on some x86 CPUs (those with AVX-512 neural-network extensions) or
    with ``TF_ENABLE_ONEDNN_OPTS=1``. So it is probed once per process: a second-order gradient
    of a two-group convolution, as the inner loop needs it. The probe runs eagerly in a thread of
    its own, since it may be asked while a ``tf.function`` is traced (where ``tf.init_scope``
    would pause the tapes it needs).
    """
    def probe() -> bool:
        with tf.device("/CPU:0"):
            x, w = tf.ones([1, 3, 3, 2]), tf.ones([2, 2, 1, 2])
            try:
                with tf.GradientTape() as outer:
                    outer.watch([x, w])
                    with tf.GradientTape() as inner:
                        inner.watch([x, w])
                        y = tf.reduce_sum(tf.square(tf.nn.conv2d(x, w, 1, "VALID")))
                    gx, gw = inner.gradient(y, [x, w])
                    z = tf.reduce_sum(gx * gx) + tf.reduce_sum(gw * gw)
                for g in outer.gradient(z, [x, w]):
                    g.numpy()
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
                return False
        return True

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(probe).result()


def conv_implementation(dtype: tf.DType) -> str:
    """"grouped" convolutions where TensorFlow can differentiate them, else "patches".

    On a GPU or TPU always "grouped". On CPU "patches" for float64 (no grouped-convolution
    gradient in any CPU kernel) and for float32 where the build has none either
    (:func:`cpu_grouped_conv_gradients`).
    """
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return "grouped"
    if tf.as_dtype(dtype) == tf.float64 or not cpu_grouped_conv_gradients():
        return "patches"
    return "grouped"


def has_conv(model: keras.Layer) -> bool:
    """Whether ``model`` (nested and subclassed models included) has a ``Conv2D`` layer."""
    return any(isinstance(layer, keras.layers.Conv2D) for layer in tfm_layers.all_layers(model))


class BatchedModel:
    """Evaluates a Functional or Sequential Keras model for ``T`` tasks with per-task weights.

    Args:
      model: a built model for which :func:`unsupported_layers` is empty.
      conv: ``"grouped"``, ``"patches"`` or ``"auto"`` (:func:`conv_implementation`).

    Raises:
      ValueError: the model contains layers that cannot run batched (named).
    """

    def __init__(self, model: keras.Model, *, conv: str = "auto"):
        bad = unsupported_layers(model)
        if bad:
            raise ValueError(f"model {model.name!r} cannot run tasks batched: {'; '.join(bad)}")
        if conv not in ("grouped", "patches", "auto"):
            raise ValueError(f"conv must be 'grouped', 'patches' or 'auto', got {conv!r}")
        self.model = model
        self.conv = conv
        self._trainable = {id(v): i for i, v in enumerate(model.trainable_variables)}
        self._non_trainable = {id(v): i for i, v in enumerate(model.non_trainable_variables)}

    def __call__(self, params: Sequence[tf.Tensor], non_trainable: Sequence[tf.Tensor],
                 x: tf.Tensor, *, training: bool) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """Runs the model for every task.

        Args:
          params: aligned with ``model.trainable_variables``, each ``[T, *variable.shape]``.
          non_trainable: aligned with ``model.non_trainable_variables``, each ``[T, ...]``.
          x: inputs ``[T, N, ...]``.
          training: the Keras training flag (batch norm uses batch statistics when True).

        Returns:
          ``(outputs [T, N, ...], non_trainable after the call)``, the latter ``[T, ...]`` each
          (batch-norm moving and batch statistics updated per task in training mode).
        """
        self._params = list(params)
        self._nt = list(non_trainable)
        self._training = training
        try:
            out = self._run(self.model, _make(x, TASK_MAJOR))
            return _to(out, TASK_MAJOR), self._nt
        finally:
            self._params = self._nt = None

    def run_block(self, block: Any, params: Sequence[tf.Tensor],
                  non_trainable: Sequence[tf.Tensor], x: tf.Tensor, *,
                  training: bool) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """:meth:`__call__` for one block of the model (:class:`tfmeta.core.blocks.Block`).

        ``params`` / ``non_trainable`` are full-length lists of which only the block's entries
        are read; ``x`` is the block's input ``[T, N, ...]``, and so is its output.
        """
        self._params = list(params)
        self._nt = list(non_trainable)
        self._training = training
        try:
            out = block.evaluate(self._layer, _make(x, TASK_MAJOR))
            return _to(out, TASK_MAJOR), self._nt
        finally:
            self._params = self._nt = None

    # ---------------------------------------------------------------------------- traversal
    def _run(self, model: keras.Model, inputs: Any) -> Any:
        if isinstance(model, keras.Sequential):
            act = inputs
            for layer in model.layers:
                act = self._layer(layer)(act)
            return act
        return model._run_through_graph(inputs, operation_fn=self._layer)

    def _layer(self, layer: keras.Layer):
        if isinstance(layer, keras.Model):
            return lambda act, *args, **kwargs: self._run(layer, act)
        if isinstance(layer, keras.layers.InputLayer):
            return lambda act, *args, **kwargs: act
        if isinstance(layer, keras.layers.Conv2D):
            return lambda act, *args, **kwargs: self._conv2d(layer, act)
        if isinstance(layer, keras.layers.Dense):
            return lambda act, *args, **kwargs: self._dense(layer, act)
        if isinstance(layer, tfm_layers.BatchNorm):
            return lambda act, *args, **kwargs: self._batch_norm(layer, act)
        return lambda *args, **kwargs: self._weightless(layer, *args, **kwargs)

    def _value(self, variable: Any) -> tf.Tensor:
        if id(variable) in self._trainable:
            return self._params[self._trainable[id(variable)]]
        return self._nt[self._non_trainable[id(variable)]]

    # ------------------------------------------------------------------------ weight layers
    def _activation(self, layer: keras.Layer, act: _Act) -> _Act:
        fn = layer.activation
        if fn is None or fn is keras.activations.linear:
            return act
        if fn in _ELEMENTWISE_ACTIVATIONS:
            return _make(fn(act.value), act.layout, act.channels)
        folded, lead = _fold(_to(act, TASK_MAJOR))  # e.g. softmax: per example, last axis
        return _make(_unfold(fn(folded), lead), TASK_MAJOR)

    def _conv2d(self, layer: keras.layers.Conv2D, act: _Act) -> _Act:
        dtype = tf.as_dtype(layer.compute_dtype)
        kernel = tf.cast(self._value(layer.kernel), dtype)  # [T, kh, kw, C, F]
        filters = kernel.shape[-1]
        impl = self.conv if self.conv != "auto" else conv_implementation(dtype)
        if impl == "patches":
            y = _conv_patches(tf.cast(_to(act, TASK_MAJOR), dtype), kernel, layer)
            if layer.use_bias:
                b = tf.cast(self._value(layer.bias), dtype)  # [T, F]
                y = y + tf.reshape(b, [tf.shape(b)[0], 1, 1, 1, filters])
            return self._activation(layer, _make(y, TASK_MAJOR))
        x = tf.cast(_to(act, CHANNELS), dtype)  # [N, H, W, T*C]
        kh, kw, c = kernel.shape[1:4]
        w = tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [kh, kw, c, -1])  # [.., C, T*F]
        # TensorFlow infers feature_group_count = T from (T*C) / C.
        y = tf.nn.conv2d(x, w, strides=list(layer.strides), padding=layer.padding.upper(),
                         dilations=list(layer.dilation_rate))
        if layer.use_bias:
            y = y + tf.reshape(tf.cast(self._value(layer.bias), dtype), [-1])
        return self._activation(layer, _make(y, CHANNELS, filters))

    def _dense(self, layer: keras.layers.Dense, act: _Act) -> _Act:
        dtype = tf.as_dtype(layer.compute_dtype)
        kernel = tf.cast(self._value(layer.kernel), dtype)  # [T, C, F]
        if act.layout == CHANNELS and len(act.value.shape) == 2:
            # [N, T*C] -> [N, T, C]: contract per task without a transpose of the input.
            n = _shape(act.value)[0]
            x = tf.reshape(tf.cast(act.value, dtype), [n, -1, kernel.shape[1]])
            y = tf.einsum("ntc,tcf->tnf", x, kernel)
        else:
            x = tf.cast(_to(act, TASK_MAJOR), dtype)  # [T, N, ..., C]
            s = _shape(x)
            y = tf.matmul(tf.reshape(x, [s[0], -1, s[-1]]), kernel)
            y = tf.reshape(y, [*s[:-1], kernel.shape[-1]])
        if layer.use_bias:
            b = tf.cast(self._value(layer.bias), dtype)  # [T, F]
            y = y + tf.reshape(b, [tf.shape(b)[0], *([1] * (len(y.shape) - 2)), b.shape[-1]])
        return self._activation(layer, _make(y, TASK_MAJOR))

    def _batch_norm(self, layer: tfm_layers.BatchNorm, act: _Act) -> _Act:
        x = act.value
        rank = len(x.shape)
        if act.layout == CHANNELS:  # [N, d..., T*C] -> [N, d..., T, C], reduce all but (T, C)
            s = _shape(x)
            x = tf.reshape(x, [*s[:-1], -1, act.channels])
            axes = list(range(rank - 1))
        else:  # [T, N, d..., C], reduce all but T and C
            axes = list(range(1, rank - 1))
        gamma = self._value(layer.gamma) if layer.gamma is not None else None
        beta = self._value(layer.beta) if layer.beta is not None else None
        y, stats = tfm_layers.batch_norm(
            x, gamma, beta, self._value(layer.moving_mean), self._value(layer.moving_variance),
            reduce_axes=axes, training=self._training, momentum=layer.momentum,
            epsilon=layer.epsilon)
        if stats is not None:
            for var, value in zip((layer.moving_mean, layer.moving_variance, layer.batch_mean,
                                   layer.batch_variance), stats):
                i = self._non_trainable[id(var)]
                self._nt[i] = tf.cast(value, self._nt[i].dtype)
        y = tf.cast(y, layer.compute_dtype)
        if act.layout == CHANNELS:
            return _make(tf.reshape(y, _shape(act.value)), CHANNELS, act.channels)
        return _make(y, TASK_MAJOR)

    # -------------------------------------------------------------------- weightless layers
    def _weightless(self, layer: keras.Layer, *args: Any, **kwargs: Any) -> _Act:
        acts = [a for a in tf.nest.flatten((args, kwargs)) if isinstance(a, _Act)]
        if isinstance(layer, keras.layers.Activation):
            return self._activation(layer, acts[0])
        direct = isinstance(layer, _ELEMENTWISE + _SPATIAL)
        layout = acts[0].layout if direct else TASK_MAJOR
        if direct and layout == CHANNELS and len({a.channels for a in acts}) > 1:
            layout = TASK_MAJOR  # merging tensors of different widths: per task
        call_kwargs = {k: v for k, v in kwargs.items() if not isinstance(v, _Act)}
        if layout == CHANNELS:
            args = tf.nest.map_structure(
                lambda a: _to(a, CHANNELS) if isinstance(a, _Act) else a, args)
            y = layer(*args, **call_kwargs)
            return _make(y, CHANNELS, acts[0].channels)
        lead = []

        def fold(a: Any) -> Any:
            if not isinstance(a, _Act):
                return a
            folded, dims = _fold(_to(a, TASK_MAJOR))
            lead[:] = dims
            return folded

        y = layer(*tf.nest.map_structure(fold, args), **call_kwargs)
        return _make(_unfold(y, lead), TASK_MAJOR)
