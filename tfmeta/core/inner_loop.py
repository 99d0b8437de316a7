"""The inner loop, written once: adaptation of a group of tasks at a time, for every algorithm.

Everything here works on **task-batched** values: fast weights, optimiser state and batch-norm
statistics carry a leading task axis ``T``, and support/query sets are ``[T, N, ...]``. With
``T = 1`` the model runs through ``keras.Layer.stateless_call`` exactly as for one task; with
``T > 1`` it runs through :class:`tfmeta.core.batched.BatchedModel`, all tasks in one pass. The same
:meth:`InnerLoop.step` serves

* MAML (second and first order), MAML++ (learned per-layer per-step learning rates, per-step
  batch-norm weights and statistics, multi-step loss), Meta-SGD (a learned learning rate per
  parameter) and ANIL (only the head adapts): options of the update below;
* Reptile: SGD or Adam on support minibatches (:func:`minibatch_indices`, computed in the graph);
* evaluation and the exported SavedModel, which run it in a ``tf.while_loop`` for a number of
  steps known only at run time (:meth:`InnerLoop.adapt` with a tensor ``steps``).

Meta-parameters ("theta") are the model's trainable variables followed by the inner loop's own
(learned learning rates, per-step batch-norm weights); the state is the model's non-trainable
variables followed by the per-step batch-norm statistics. :class:`InnerVariables` creates and
orders them; the meta-learners differentiate through all of theta.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from keras.src.models import functional as keras_functional

from tfmeta.core import batched
from tfmeta.core import blocks as tfm_blocks
from tfmeta.core import functional as F
from tfmeta.core import layers as tfm_layers
from tfmeta.core import losses as tfm_losses
from tfmeta.base.choices import BN_MODES

ADAM_EPSILON = 1e-8
# Adaptations that are not differentiated run as a tf.while_loop when longer than this; up to it
# they are unrolled, which the graph optimiser handles best (measured for serving latency).
UNROLL_MAX_STEPS = 10

Tensors = list[tf.Tensor]


class AdamState(NamedTuple):
    """Adam's state for every task of a group (each tensor with a leading task axis).

    Attributes:
      m, v: first and second moments of the adapted parameters.
      powers: ``[beta1^n, beta2^n]`` (``[T]`` each) when the state is carried from task to task
        (the bias corrections continue from them); empty when every task starts from zero (the
        corrections then follow from the step count alone).
    """

    m: Tensors
    v: Tensors
    powers: Tensors


class LoopState(NamedTuple):
    """What the inner loop carries from one step to the next (leading task axis everywhere).

    Attributes:
      fast: fast parameters, aligned with ``model.trainable_variables``.
      optimizer_state: an :class:`AdamState`, or ``()`` for SGD.
      batch_norm_stats: the model's non-trainable values (moving statistics).
      step_batch_norm_stats: per-step batch-norm statistics ``[T, slots, C]`` (MAML++).
    """

    fast: Tensors
    optimizer_state: AdamState | tuple
    batch_norm_stats: Tensors
    step_batch_norm_stats: Tensors


class Adapted(NamedTuple):
    """The result of :meth:`InnerLoop.adapt` (leading task axis everywhere).

    Attributes:
      fast: adapted parameters, aligned with ``model.trainable_variables``.
      batch_norm_stats: the model's non-trainable values after adaptation.
      inner_state: values aligned with the inner loop's own state variables
        (:attr:`InnerVariables.non_trainable`): the per-step batch-norm statistics, then the
        carried optimiser state.
    """

    fast: Tensors
    batch_norm_stats: Tensors
    inner_state: Tensors


class MetaParams(NamedTuple):
    """Meta-parameter values (``meta_variables``), split into the model's and the inner loop's.

    Attributes:
      model: aligned with ``model.trainable_variables``.
      inner: aligned with :attr:`InnerVariables.trainable` (learned rates, per-step BN weights).
    """

    model: Tensors
    inner: Tensors


class StateValues(NamedTuple):
    """State values (``state_variables``), split into the model's and the inner loop's.

    Attributes:
      model: aligned with ``model.non_trainable_variables``.
      inner: aligned with :attr:`InnerVariables.non_trainable`.
    """

    model: Tensors
    inner: Tensors
Steps = int | tf.Tensor


def minibatch_indices(num_examples: Any, batch_size: int, step: Any, seed: Any) -> tf.Tensor:
    """Support positions used by inner step ``step``: ``[min(batch_size, num_examples)]``.

    Minibatches are consecutive slices of per-pass shuffles of the support set (without
    replacement within a pass, reshuffled every pass, as in the Reptile reference code). The
    shuffle of pass ``p`` is a pure function of ``(seed, p)``, computed in the graph with
    integer ops, so the schedule is the same in training, evaluation and the exported model,
    works for a support size known only at run time, and compiles under XLA.

    Args:
      num_examples: support-set size S (int or scalar tensor).
      batch_size: examples per step (clipped to S).
      step: 0-based inner step (int or scalar tensor).
      seed: seed of the shuffles: a Python int or scalar (one schedule), or an integer tensor
        ``[T]`` of 32-bit task seeds (:func:`task_seeds`), which gives one schedule per task,
        ``[T, min(batch_size, S)]``.
    """
    n = tf.cast(num_examples, tf.int32)
    if isinstance(num_examples, int):
        b = min(batch_size, num_examples)
    else:
        b = tf.minimum(tf.constant(batch_size, tf.int32), n)
    positions = tf.cast(step, tf.int32) * b + tf.range(b)
    passes = positions // n
    per_task = not isinstance(seed, int) and tf.convert_to_tensor(seed).shape.rank == 1
    keys = tf.range(tf.cast(n, tf.int64))

    def permutation(p: tf.Tensor) -> tf.Tensor:
        # Sorting distinct hashed keys: integer arithmetic gives the same permutation eagerly, in
        # graphs and under XLA (stateless random ops differ between TensorFlow and XLA kernels).
        if per_task:
            # Task seeds are 32-bit hashes: mixed without products that could overflow int64.
            base = _hash32(tf.cast(seed, tf.int64)[:, None]
                           + _hash32(tf.cast(p, tf.int64) + 0x9E3779B1))
        else:
            base = _hash32(tf.cast(seed, tf.int64) * 0x9E3779B1 + tf.cast(p, tf.int64))
        return tf.argsort(_hash32(tf.bitwise.bitwise_xor(base, keys)), axis=-1, stable=True)

    # A minibatch spans at most two passes.
    first, last = permutation(passes[0]), permutation(passes[-1])
    return tf.where(tf.equal(passes, passes[0]), tf.gather(first, positions % n, axis=-1),
                    tf.gather(last, positions % n, axis=-1))


def task_seeds(x: tf.Tensor, y: tf.Tensor, seed: int) -> tf.Tensor:
    """A 32-bit seed per task, hashed from its support set: int64 ``[T]``.

    The minibatch schedule of a task is drawn from it (:func:`minibatch_indices`), so each task
    gets its own shuffles, like the Reptile reference code's, while the schedule stays a pure
    function of the task: the same in training, evaluation, a resumed run and the exported model,
    with no seed to pass along. Integer sums are exact in any order, so the hash is the same in
    graphs, under XLA and eagerly.

    Args:
      x, y: support sets ``[T, S, ...]``.
      seed: mixed into every task's seed.
    """
    mask = tf.constant(0xFFFFFFFF, tf.int64)
    total = tf.constant(seed, tf.int64)
    for z in (x, y):
        if z.dtype.is_floating:
            bits = tf.cast(tf.bitcast(tf.cast(z, tf.float32), tf.int32), tf.int64)
        else:
            bits = tf.cast(z, tf.int64)
        bits = tf.bitwise.bitwise_and(tf.reshape(bits, [num_tasks(z), -1]), mask)
        where = _hash32(tf.range(tf.shape(bits, out_type=tf.int64)[1]) + 0x7F4A7C15)
        # Each term is < 2^32, so the sum of up to 2^31 of them stays within int64.
        total = total + tf.reduce_sum(_hash32(tf.bitwise.bitwise_xor(bits, where)), axis=1)
    return _hash32(total)


def loop_steps(steps: Any) -> Any:
    """``steps`` as :meth:`InnerLoop.adapt` should get it when nothing differentiates through it.

    A Python int above :data:`UNROLL_MAX_STEPS` becomes a tensor, so the loop runs as a
    ``tf.while_loop`` whose graph does not grow with the step count; shorter counts and tensors
    are returned unchanged.
    """
    if isinstance(steps, int) and not isinstance(steps, bool) and steps > UNROLL_MAX_STEPS:
        return tf.constant(steps, tf.int32)
    return steps


def _hash32(x: tf.Tensor) -> tf.Tensor:
    """A bijection of 32-bit integers that mixes bits well ("lowbias32"), computed in int64."""
    mask = tf.constant(0xFFFFFFFF, tf.int64)
    x = tf.bitwise.bitwise_and(x, mask)
    low16 = tf.constant(0xFFFF, tf.int64)
    for shift, mult in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, shift))
        # (x * mult) mod 2^32 from 16-bit halves, so no product overflows int64.
        hi, lo = tf.bitwise.right_shift(x, 16), tf.bitwise.bitwise_and(x, low16)
        x = tf.bitwise.bitwise_and(
            tf.bitwise.left_shift(tf.bitwise.bitwise_and(hi * mult, low16), 16) + lo * mult, mask)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def _bias_correction(beta: float, t: Steps, dtype: tf.DType) -> tf.Tensor:
    """Adam's ``1 - beta^(t + 1)`` for 0-based step ``t``, by the same ops for any ``t``.

    An unrolled loop (Python ``t``) and a ``tf.while_loop`` (tensor ``t``) must compute the same
    value to the bit: ``1 - tf.pow(beta, n)`` in float32 is off by ~1e-4 relative for
    ``beta = 0.999`` and small ``n`` (cancellation), which made a 12-step adaptation differ between
    the two. ``-expm1(n * log(beta))`` has no cancellation and is exact for ``beta = 0``.
    """
    log_beta = math.log(beta) if beta > 0 else -math.inf
    n = tf.cast(t + 1, dtype)
    return -tf.math.expm1(n * tf.constant(log_beta, dtype))


def num_tasks(x: tf.Tensor) -> Any:
    """Number of tasks (leading axis): static int where known."""
    return x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]


def _per_task(values: tf.Tensor, tasks: Any) -> tf.Tensor:
    """A value shared by all tasks, repeated along a new leading task axis."""
    if isinstance(tasks, int):
        return tf.broadcast_to(values[None], [tasks, *values.shape])
    return tf.broadcast_to(values[None], tf.concat([[tasks], tf.shape(values)], 0))


def _task_scalar(value: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """A per-task scalar ``[T]`` shaped to broadcast against ``like [T, ...]``."""
    return tf.reshape(value, [-1] + [1] * (len(like.shape) - 1))


def _head_indices(model: keras.Model) -> list[int]:
    """Positions (in ``model.trainable_variables``) of the head: the layer owning the last one."""
    variables = model.trainable_variables
    if not variables:
        raise ValueError(f"model {model.name!r} has no trainable variables")
    last = id(variables[-1])
    owner = next(layer for layer in tfm_layers.all_layers(model)
                 if not isinstance(layer, keras.Model)
                 and any(id(v) == last for v in layer.trainable_weights))
    mine = {id(v) for v in owner.trainable_weights}
    return [i for i, v in enumerate(variables) if id(v) in mine]


@dataclasses.dataclass
class InnerOptions:
    """What the inner loop does; see :class:`tfmeta.core.maml.MAML` and :class:`tfmeta.core.reptile.Reptile`.

    Attributes:
      lr: inner learning rate (the initial value when it is learned).
      optimizer: ``"sgd"`` or ``"adam"`` (Adam: Reptile only).
      adam_beta1, adam_beta2: Adam's decay rates.
      batch_size: support examples per step (None: the whole support set); Reptile only.
      seed: seed of the minibatch schedule.
      shuffle_per_task: draw each task's minibatch schedule from a seed hashed from its support
        set (:func:`task_seeds`) instead of one schedule shared by every task.
      carry_optimizer_state: Adam's moments and bias-correction powers persist from task to task
        in state variables (:attr:`InnerVariables.optimizer_state`) instead of starting from zero
        for every task, as in the Reptile reference code; see :meth:`InnerLoop.adapt`.
      grad_clip: global-norm clip of each task's inner gradients (None: no clipping).
      learned_lr: ``"none"``, ``"per_layer_step"`` (MAML++'s LSLR: one learned rate per parameter
        tensor and inner step) or ``"per_parameter"`` (Meta-SGD: one per scalar parameter).
      adapt: ``"all"`` parameters adapt, or only the ``"head"`` (ANIL: the last layer with
        weights; the rest is meta-trained in the outer loop only).
      adapt_batch_norm: whether batch-norm scales and offsets adapt in the inner loop.
      per_step_bn: per-step batch-norm weights and statistics (MAML++): inner step ``t`` (and the
        query pass after it) uses its own ``gamma``, ``beta`` and moving statistics.
      per_step_slots: number of per-step slots (the training inner steps); steps beyond it use
        the last slot, as do learned per-step learning rates.
      proximal: weight ``lambda`` of a proximal term ``lambda / 2 * ||phi - theta||^2`` added to
        every task's support loss (implicit MAML), which keeps the adapted parameters ``phi``
        near the meta-parameters ``theta``; 0 for none.
    """

    lr: float
    optimizer: str = "sgd"
    adam_beta1: float = 0.0
    adam_beta2: float = 0.999
    batch_size: int | None = None
    seed: int = 0
    shuffle_per_task: bool = False
    carry_optimizer_state: bool = False
    grad_clip: float | None = None
    learned_lr: str = "none"
    adapt: str = "all"
    adapt_batch_norm: bool = True
    per_step_bn: bool = False
    per_step_slots: int = 1
    proximal: float = 0.0


class InnerVariables(tf.Module):
    """The inner loop's own meta-parameters and state, created once per meta-learner.

    Learned learning rates (per layer and step, or per parameter), per-step batch-norm scales and
    offsets (trainable) and per-step moving statistics (non-trainable), and the carried inner
    optimiser state (non-trainable, after the per-step statistics: Adam's first and second
    moments of every adapted parameter, then the bias-correction powers ``beta1^n`` and
    ``beta2^n``). A ``tf.Module``, so that a ``tf.train.Checkpoint`` and a SavedModel track them;
    being state variables, the trainer keeps them as the mean over the tasks of every replica,
    like the batch-norm statistics.
    """

    def __init__(self, model: keras.Model, options: InnerOptions, adapted: list[bool]):
        super().__init__(name="inner_loop")
        params = model.trainable_variables
        slots = options.per_step_slots
        self.lr_index: dict[int, int] = {}  # model param index -> position in `trainable`
        trainable: list[tf.Variable] = []
        if options.learned_lr != "none":
            for i, (p, ok) in enumerate(zip(params, adapted)):
                if not ok:
                    continue
                shape = [slots] if options.learned_lr == "per_layer_step" else p.shape
                self.lr_index[i] = len(trainable)
                # In the parameter's dtype (float32 weights under mixed precision too).
                trainable.append(tf.Variable(tf.fill(shape, tf.constant(options.lr, p.dtype)),
                                             name=f"lr_{i}"))
        # Per-step batch norm: param index -> trainable position; nt index -> state position.
        self.step_params: dict[int, int] = {}
        self.step_stats: dict[int, int] = {}
        non_trainable: list[tf.Variable] = []
        if options.per_step_bn:
            p_pos = {id(v): i for i, v in enumerate(params)}
            nt_pos = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
            for layer in tfm_layers.batch_norm_layers(model):
                for var in (layer.gamma, layer.beta):
                    if var is not None and id(var) in p_pos:
                        self.step_params[p_pos[id(var)]] = len(trainable)
                        trainable.append(tf.Variable(
                            tf.repeat(var.value[None], slots, axis=0), name=f"step_{var.name}"))
                for var in (layer.moving_mean, layer.moving_variance):
                    self.step_stats[nt_pos[id(var)]] = len(non_trainable)
                    non_trainable.append(tf.Variable(
                        tf.repeat(var.value[None], slots, axis=0), trainable=False,
                        name=f"step_{var.name}"))
        self.num_step_stats = len(non_trainable)
        self.optimizer_state: list[tf.Variable] = []
        if options.carry_optimizer_state and options.optimizer == "adam":
            moments = [(i, p) for i, (p, ok) in enumerate(zip(params, adapted)) if ok]
            for kind in ("m", "v"):
                self.optimizer_state += [
                    tf.Variable(tf.zeros(p.shape, p.dtype), trainable=False,
                                name=f"adam_{kind}_{i}") for i, p in moments]
            dtype = moments[0][1].dtype
            self.optimizer_state += [
                tf.Variable(tf.ones([], dtype), trainable=False, name=f"adam_beta{j}_power")
                for j in (1, 2)]
        non_trainable += self.optimizer_state
        self.trainable = trainable
        self.non_trainable = non_trainable


class InnerLoop:
    """Adaptation, prediction and per-task losses for groups of tasks; see the module docstring.

    Args:
      model: a built Keras model.
      loss: per-example loss name or callable (:func:`tfmeta.core.losses.get`).
      bn_mode: default query batch-norm mode (``"transductive"``, ``"support"``, ``"running"``).
      options: the update rule.
      batched_forward: run groups of tasks with :class:`tfmeta.core.batched.BatchedModel`; when False
        (or the model has layers that cannot run batched) groups are computed one task at a time.
    """

    def __init__(self, model: keras.Model, *, loss: Any, bn_mode: str, options: InnerOptions,
                 batched_forward: bool = True):
        self.model = model
        self.options = options
        self.bn_mode = bn_mode
        self.loss_name = loss if isinstance(loss, str) else None
        self.loss_fn = tfm_losses.get(loss)
        self.accuracy_fn = tfm_losses.accuracy(loss)
        self._bn_index = tfm_layers.batch_statistics_index(model)
        n = len(model.trainable_variables)
        adapted = [True] * n
        if options.adapt == "head":
            head = set(_head_indices(model))
            adapted = [i in head for i in range(n)]
        if not options.adapt_batch_norm or options.per_step_bn:
            bn_vars = {id(v) for layer in tfm_layers.batch_norm_layers(model)
                       for v in (layer.gamma, layer.beta) if v is not None}
            adapted = [ok and id(v) not in bn_vars
                       for ok, v in zip(adapted, model.trainable_variables)]
        if not any(adapted):
            raise ValueError("no parameter adapts in the inner loop (check adapt / "
                             "adapt_batch_norm)")
        self.adapted = adapted
        # Adapted parameters whose support-pass gradient is zero in exact arithmetic (a bias that
        # batch norm subtracts again): set to exactly zero so round-off never becomes a step.
        cancelled = tfm_layers.biases_cancelled_by_batch_norm(model)
        self._cancelled = [id(v) in cancelled
                           for v, ok in zip(model.trainable_variables, adapted) if ok]
        self.variables = InnerVariables(model, options, adapted)
        self.num_params = n
        self.num_state = len(model.non_trainable_variables)
        self.unsupported = batched.unsupported_layers(model) if batched_forward else []
        self.batched = (batched.BatchedModel(model) if batched_forward and not self.unsupported
                        else None)
        self._blockwise: tfm_blocks.BlockwiseGradient | None = None

    # ------------------------------------------------------------------ variables & layout
    @property
    def meta_variables(self) -> list[Any]:
        """Model trainable variables, then the inner loop's learned ones (the meta-parameters)."""
        return [*self.model.trainable_variables, *self.variables.trainable]

    @property
    def state_variables(self) -> list[Any]:
        """Model non-trainable variables, then the per-step batch-norm statistics."""
        return [*self.model.non_trainable_variables, *self.variables.non_trainable]

    def split_theta(self, theta: Sequence[tf.Tensor]) -> MetaParams:
        """Values aligned with :attr:`meta_variables`, named by owner."""
        return MetaParams(list(theta[: self.num_params]), list(theta[self.num_params:]))

    def split_state(self, state: Sequence[tf.Tensor]) -> StateValues:
        """Values aligned with :attr:`state_variables`, named by owner."""
        return StateValues(list(state[: self.num_state]), list(state[self.num_state:]))

    # ---------------------------------------------------------------------------- forward
    def forward(self, params: Tensors, nt: Tensors, x: tf.Tensor, *,
                training: bool) -> tuple[tf.Tensor, Tensors]:
        """The model on ``x [T, N, ...]`` with per-task ``params`` / ``nt`` (``[T, ...]`` each)."""
        if self.batched is not None and not (isinstance(x.shape[0], int) and x.shape[0] == 1):
            return self.batched(params, nt, x, training=training)
        if x.shape[0] != 1:
            raise ValueError(f"one-task forward pass called with {x.shape[0]} tasks")
        out, new = F.forward(self.model, [p[0] for p in params], [v[0] for v in nt], x[0],
                             training=training)
        return out[None], [v[None] for v in new]

    def _block_one_task(self, block: tfm_blocks.Block, params: Tensors, nt: Tensors,
                        x: tf.Tensor, training: bool) -> tuple[tf.Tensor, Tensors]:
        """One block of the model for one task (``[1, ...]`` values), as ``stateless_call``."""
        model = self.model
        mapping = [(model.trainable_variables[i], params[i][0]) for i in block.params]
        mapping += [(model.non_trainable_variables[i], nt[i][0]) for i in block.state]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            out = block.evaluate(
                lambda op: keras_functional.operation_fn(op, training=training), x[0])
            new = list(nt)
            for i in block.state:
                new[i] = tf.convert_to_tensor(
                    scope.get_current_value(model.non_trainable_variables[i]))[None]
        return out[None], new

    @property
    def blockwise(self) -> tfm_blocks.BlockwiseGradient:
        """The support-loss gradient block by block (:mod:`tfmeta.core.blocks`), made once."""
        if self._blockwise is None:
            self._blockwise = tfm_blocks.BlockwiseGradient(
                self.model, one_task=self._block_one_task,
                batched=(None if self.batched is None else
                         lambda block, p, nt, x, training: self.batched.run_block(
                             block, p, nt, x, training=training)),
                whole=self.forward)
        return self._blockwise

    def _slot(self, t: Steps) -> Steps:
        last = self.options.per_step_slots - 1
        return min(t, last) if isinstance(t, int) else tf.minimum(t, last)

    def _at_step(self, fast: Tensors, nt: Tensors, extra_theta: Tensors, steps_nt: Tensors,
                 slot: Steps) -> tuple[Tensors, Tensors]:
        """Substitutes the per-step batch-norm weights and statistics of ``slot``."""
        idx = self.variables
        if not idx.step_params and not idx.step_stats:
            return fast, nt
        tasks = num_tasks(fast[0])
        fast, nt = list(fast), list(nt)
        for i, j in idx.step_params.items():
            fast[i] = _per_task(tf.gather(extra_theta[j], slot), tasks)
        for i, j in idx.step_stats.items():
            nt[i] = tf.gather(steps_nt[j], slot, axis=1)
        return fast, nt

    def _store_step_stats(self, nt_before: Tensors, nt_after: Tensors, steps_nt: Tensors,
                          slot: Steps) -> tuple[Tensors, Tensors]:
        """Moves updated moving statistics into their per-step slot (the model's are kept)."""
        idx = self.variables.step_stats
        if not idx:
            return nt_after, steps_nt
        nt_after, steps_nt = list(nt_after), list(steps_nt)
        for i, j in idx.items():
            rows = steps_nt[j]
            hot = tf.one_hot(slot, rows.shape[1], dtype=rows.dtype)[None, :, None]
            steps_nt[j] = rows * (1 - hot) + tf.cast(nt_after[i], rows.dtype)[:, None, :] * hot
            nt_after[i] = nt_before[i]
        return nt_after, steps_nt

    # ------------------------------------------------------------------------------ losses
    def check_labels(self, y: tf.Tensor, outputs: tf.Tensor, name: str) -> tf.Tensor:
        """Checks classification labels are in range; returns ``y``.

        Eagerly a Python ValueError; in a graph a ``tf.debugging`` assertion (an
        InvalidArgumentError at run time) with the same message.
        """
        if self.loss_name == "sparse_categorical_crossentropy":
            classes = outputs.shape[-1]
        elif self.loss_name == "binary_crossentropy":
            classes = 2
        else:
            return y
        message = f"{name} labels must be integers in [0, {classes})"
        if tf.executing_eagerly():
            arr = np.asarray(y)
            if arr.size and (arr.min() < 0 or arr.max() >= classes):
                raise ValueError(f"{message}; got labels in [{arr.min()}, {arr.max()}]")
            return y
        yi = tf.cast(y, tf.int64)
        checks = [
            tf.debugging.assert_non_negative(yi, message=message),
            tf.debugging.assert_less(yi, tf.constant(classes, tf.int64), message=message),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(y)

    def _per_example(self, fn: Callable, y: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
        """``fn`` on the tasks folded into one batch, back to ``[T, N]``."""
        lead = tf.shape(outputs)[:2]
        flat_out = tf.reshape(outputs, tf.concat([[-1], tf.shape(outputs)[2:]], 0))
        flat_y = tf.reshape(y, tf.concat([[-1], tf.shape(y)[2:]], 0))
        return tf.reshape(fn(flat_y, flat_out), lead)

    def task_loss(self, y: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
        """Mean per-example loss of each task: ``[T]``."""
        return tf.reduce_mean(self._per_example(self.loss_fn, y, outputs), axis=1)

    def task_accuracy(self, y: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(self._per_example(self.accuracy_fn, y, outputs), axis=1)

    # ---------------------------------------------------------------------------- the step
    def _clip(self, grads: Tensors) -> Tensors:
        """Clips each task's gradients to a global norm (differentiably, for second order)."""
        if self.options.grad_clip is None:
            return grads
        sq = tf.add_n([tf.reduce_sum(tf.square(g), axis=list(range(1, len(g.shape))))
                       for g in grads])  # [T]
        norm = tf.sqrt(tf.maximum(sq, tf.cast(1e-30, sq.dtype)))
        clip = tf.constant(self.options.grad_clip, norm.dtype)
        scale = clip / tf.maximum(norm, clip)
        return [g * tf.cast(tf.reshape(scale, [-1] + [1] * (len(g.shape) - 1)), g.dtype)
                for g in grads]

    def init_optimizer_state(self, fast: Tensors,
                             carried: Sequence[tf.Tensor] = ()) -> AdamState | tuple:
        """The inner optimiser's state at the start of adaptation; ``()`` for SGD.

        Adam: zero moments for every task, or with ``carried`` (the values of
        :attr:`InnerVariables.optimizer_state`: moments, then the bias-correction powers) the
        carried state, repeated for every task of ``fast``.
        """
        if self.options.optimizer == "sgd":
            return ()
        adapted = [p for p, ok in zip(fast, self.adapted) if ok]
        if not carried:
            return AdamState(F.zeros_like(adapted), F.zeros_like(adapted), [])
        tasks, k = num_tasks(fast[0]), len(adapted)
        m, v, powers = carried[:k], carried[k:2 * k], carried[2 * k:]
        return AdamState([_per_task(tf.cast(c, p.dtype), tasks) for c, p in zip(m, adapted)],
                         [_per_task(tf.cast(c, p.dtype), tasks) for c, p in zip(v, adapted)],
                         [_per_task(c, tasks) for c in powers])

    def _learning_rate(self, i: int, extra_theta: Tensors, slot: Steps, like: tf.Tensor) -> Any:
        opts = self.options
        if opts.learned_lr == "none":
            return tf.constant(opts.lr, like.dtype)
        lr = extra_theta[self.variables.lr_index[i]]
        if opts.learned_lr == "per_layer_step":
            lr = tf.gather(lr, slot)
        return tf.cast(lr, like.dtype)  # per_parameter: broadcasts over the task axis

    def step(self, t: Steps, inner_params: Tensors, state: LoopState, x: tf.Tensor,
             y: tf.Tensor, *, first_order: bool, training: bool = True,
             anchor: Tensors | None = None, blockwise: bool = False) -> LoopState:
        """One inner update of every task on ``(x, y)``: the step every inner loop is made of.

        Args:
          t: 0-based step (Python int when unrolled, scalar tensor inside a ``tf.while_loop``).
          inner_params: the inner loop's meta-parameters (:attr:`MetaParams.inner`: learned
            rates, per-step batch-norm weights).
          state: the loop state before the step.
          x, y: this step's support examples ``[T, N, ...]``.
          first_order: treat the inner gradients as constants.
          training: Keras training flag of the support pass.
          anchor: the starting parameters (``[T, ...]``, aligned with ``state.fast``), the centre
            of the proximal term; needed when ``options.proximal`` is set.
          blockwise: compute the support-loss gradient block by block, each block recomputed
            when the step is differentiated (:mod:`tfmeta.core.blocks`): the same values, with
            only block-boundary activations kept by a tape around the step.

        Returns:
          The loop state after the step.
        """
        opts = self.options
        slot = self._slot(t)
        fast, nt = state.fast, state.batch_norm_stats
        adapted = [p for p, ok in zip(fast, self.adapted) if ok]
        if blockwise:
            params, nt_in = self._at_step(fast, nt, inner_params, state.step_batch_norm_stats,
                                          slot)

            def support_loss(out: tf.Tensor) -> tf.Tensor:
                return tf.reduce_sum(self.task_loss(self.check_labels(y, out, "support"), out))

            # Adapted entries of params are the fast weights themselves (_at_step substitutes
            # only per-step batch-norm weights, which do not adapt).
            _, all_grads, nt_out = self.blockwise(params, nt_in, x, support_loss,
                                                  training=training)
            grads = [g for g, ok in zip(all_grads, self.adapted) if ok]
        else:
            with tf.GradientTape() as tape:
                tape.watch(adapted)
                it = iter(adapted)
                current = [next(it) if ok else p for p, ok in zip(fast, self.adapted)]
                params, nt_in = self._at_step(current, nt, inner_params,
                                              state.step_batch_norm_stats, slot)
                out, nt_out = self.forward(params, nt_in, x, training=training)
                y = self.check_labels(y, out, "support")
                loss = tf.reduce_sum(self.task_loss(y, out))
            grads = tape.gradient(loss, adapted,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
        if training:  # batch statistics: biases cancelled by batch norm have no gradient
            grads = [tf.zeros_like(g) if cancelled else g
                     for g, cancelled in zip(grads, self._cancelled)]
        if opts.proximal:
            # The proximal term's gradient, lambda * (phi - theta), per adapted parameter.
            centre = [a for a, ok in zip(anchor, self.adapted) if ok]
            grads = [g + tf.cast(opts.proximal, g.dtype) * (p - c)
                     for g, p, c in zip(grads, adapted, centre)]
        grads = self._clip(grads)
        if first_order:
            grads = F.stop_gradient(grads)
        nt_out, steps_nt = self._store_step_stats(nt_in, nt_out, state.step_batch_norm_stats,
                                                  slot)
        nt_out = [tf.cast(a, b.dtype) for a, b in zip(nt_out, nt)]
        positions = [i for i, ok in enumerate(self.adapted) if ok]
        new = list(fast)
        if opts.optimizer == "sgd":
            for i, p, g in zip(positions, adapted, grads):
                new[i] = p - self._learning_rate(i, inner_params, slot, p) * g
            return LoopState(new, (), nt_out, steps_nt)
        adam = state.optimizer_state
        b1, b2 = opts.adam_beta1, opts.adam_beta2
        m = [b1 * mi + (1.0 - b1) * g for mi, g in zip(adam.m, grads)]
        v = [b2 * vi + (1.0 - b2) * tf.square(g) for vi, g in zip(adam.v, grads)]
        powers: Tensors = []
        if adam.powers:
            # Carried state: the bias corrections continue from the carried powers beta^n ([T]).
            powers = [adam.powers[0] * b1, adam.powers[1] * b2]
            c1, c2 = 1.0 - powers[0], 1.0 - powers[1]
        else:
            dtype = adapted[0].dtype
            c1, c2 = _bias_correction(b1, t, dtype), _bias_correction(b2, t, dtype)
        for i, p, mi, vi in zip(positions, adapted, m, v):
            lr = self._learning_rate(i, inner_params, slot, p)
            d1, d2 = (_task_scalar(c, p) for c in (c1, c2)) if powers else (c1, c2)
            new[i] = p - lr * (mi / F.like(d1, p)) / (tf.sqrt(vi / F.like(d2, p)) + ADAM_EPSILON)
        return LoopState(new, AdamState(m, v, powers), nt_out, steps_nt)

    # ------------------------------------------------------------------------- adaptation
    def start(self, theta: Sequence[tf.Tensor], state: Sequence[tf.Tensor],
              tasks: Any) -> LoopState:
        """Every task's starting point, before the optimiser state is known (``()``)."""
        params = self.split_theta(theta).model
        nt, inner = self.split_state(state)
        steps_nt = inner[: self.variables.num_step_stats]
        return LoopState([_per_task(p, tasks) for p in params], (),
                         [_per_task(v, tasks) for v in nt], [_per_task(v, tasks) for v in steps_nt])

    def _support_batch(self, x: tf.Tensor, y: tf.Tensor, t: Steps,
                       seeds: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor]:
        if self.options.batch_size is None:
            return x, y
        num = x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]
        if seeds is None:
            index = minibatch_indices(num, self.options.batch_size, t, self.options.seed)
            return tf.gather(x, index, axis=1), tf.gather(y, index, axis=1)
        index = minibatch_indices(num, self.options.batch_size, t, seeds)  # [T, b]
        return (tf.gather(x, index, axis=1, batch_dims=1),
                tf.gather(y, index, axis=1, batch_dims=1))

    def _task_seeds(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor | None:
        """Per-task minibatch seeds (None: one schedule shared by every task)."""
        if self.options.batch_size is None or not self.options.shuffle_per_task:
            return None
        return task_seeds(x, y, self.options.seed)

    def adapt(self, theta: Sequence[tf.Tensor], state: Sequence[tf.Tensor], x: tf.Tensor,
              y: tf.Tensor, steps: Steps, *, first_order: bool, training: bool = True,
              after_step: Callable[[int, LoopState], None] | None = None) -> Adapted:
        """Adapts every task of ``(x [T, S, ...], y [T, S, ...])`` for ``steps`` inner steps.

        Args:
          theta: meta-parameters aligned with :attr:`meta_variables` (no task axis).
          state: values aligned with :attr:`state_variables` (no task axis).
          x, y: support sets.
          steps: a Python int unrolls the loop (needed to differentiate through it); a scalar
            tensor runs a ``tf.while_loop`` (evaluation and serving with a run-time count).
          first_order: treat inner gradients as constants.
          training: Keras training flag of the support passes.
          after_step: called as ``after_step(t, loop_state)`` after every unrolled step
            (the multi-step loss).

        Returns:
          The :class:`Adapted` parameters and statistics of every task.

        With ``carry_optimizer_state``, every task starts from the carried optimiser state and
        returns its own state after adaptation. The meta-learners average those over all tasks of
        a meta-iteration (across replicas too), like the batch-norm statistics, and that mean is
        the next iteration's carried state. The Reptile reference code runs the tasks of a
        meta-batch one after another, each starting where the previous one left off; the mean is
        its order-free counterpart, so tasks may run in parallel and on several replicas and the
        result does not depend on how they are grouped. Evaluation and the exported model start
        every task from the carried state and never change it, as the reference evaluates.
        """
        inner_params = self.split_theta(theta).inner
        carried = self.split_state(state).inner[self.variables.num_step_stats:]
        loop = self.start(theta, state, num_tasks(x))
        loop = loop._replace(optimizer_state=self.init_optimizer_state(loop.fast, carried))
        anchor = loop.fast if self.options.proximal else None
        seeds = self._task_seeds(x, y)
        if isinstance(steps, int):
            for t in range(steps):
                xb, yb = self._support_batch(x, y, t, seeds)
                loop = self.step(t, inner_params, loop, xb, yb, first_order=first_order,
                                 training=training, anchor=anchor)
                if after_step is not None:
                    after_step(t, loop)
        else:
            def body(t, loop):
                xb, yb = self._support_batch(x, y, t, seeds)
                return t + 1, self.step(t, inner_params, loop, xb, yb, first_order=first_order,
                                        training=training, anchor=anchor)

            _, loop = tf.while_loop(lambda t, _: t < steps, body, (tf.constant(0), loop))
        return self.result(loop, carried=bool(carried))

    @staticmethod
    def result(loop: LoopState, *, carried: bool) -> Adapted:
        """The :class:`Adapted` result of a final loop state (``carried``: the optimiser state is
        carried from task to task, so it is part of the state after adaptation)."""
        carried_after = tf.nest.flatten(loop.optimizer_state) if carried else []
        return Adapted(loop.fast, loop.batch_norm_stats,
                       [*loop.step_batch_norm_stats, *carried_after])

    def predict(self, theta: Sequence[tf.Tensor], state: Sequence[tf.Tensor], fast: Tensors,
                x: tf.Tensor, *, support_x: tf.Tensor | None, steps_taken: Steps,
                bn_mode: str | None = None, blockwise: bool = False) -> tf.Tensor:
        """Outputs for ``x [T, Q, ...]`` under ``fast``, with batch norm as ``bn_mode`` says.

        ``transductive``: the queries are normalised with their own batch statistics.
        ``support``: with the statistics of ``support_x`` under ``fast``, so each query's output
        depends only on itself and the support set. ``running``: with the moving statistics of
        ``state``. ``steps_taken`` selects the per-step batch-norm slot (the last step's).
        ``blockwise``: a tape around the call keeps only block-boundary activations
        (:meth:`tfmeta.core.blocks.BlockwiseGradient.forward`); the same outputs.
        """
        bn_mode = bn_mode or self.bn_mode
        forward = self.blockwise.forward if blockwise else self.forward
        start = self.start(theta, state, num_tasks(x))
        nt, steps_nt = start.batch_norm_stats, start.step_batch_norm_stats
        extra = self.split_theta(theta).inner
        last = (max(steps_taken - 1, 0) if isinstance(steps_taken, int)
                else tf.maximum(steps_taken - 1, 0))
        slot = self._slot(last)
        params, nt = self._at_step(fast, nt, extra, steps_nt, slot)
        if bn_mode == "transductive":
            return forward(params, nt, x, training=True)[0]
        if bn_mode == "running":
            return forward(params, nt, x, training=False)[0]
        if bn_mode != "support":
            raise ValueError(f"unknown bn_mode {bn_mode!r}; allowed: {list(BN_MODES)}")
        if support_x is None:
            raise ValueError("bn_mode='support' needs support_x (the support set) to normalise the "
                             "queries")
        _, nt_support = forward(params, nt, support_x, training=True)
        nt_query = tfm_layers.with_batch_statistics(nt_support, self._bn_index)
        return forward(params, nt_query, x, training=False)[0]


def log_fallback(model: keras.Model, unsupported: list[str]) -> None:
    """Says once why tasks run one at a time."""
    logging.warning("Model %r has layers that cannot run tasks batched, so tasks are adapted one "
                    "at a time: %s", model.name, "; ".join(unsupported))
