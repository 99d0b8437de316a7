"""MAML and first-order MAML for any built Keras 3 model.

The model is called through ``keras.Layer.stateless_call`` with "fast"
parameter tensors, so adaptation never touches the model's variables and the
meta-gradient is an ordinary nested ``tf.GradientTape`` computation.

This module also holds :class:`MetaLearner`, the part MAML shares with
Reptile: input checks, the batch-norm modes, ``adapt`` / ``predict`` /
``evaluate`` and the loop over the tasks of a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tfmeta import functional as F
from tfmeta import layers as tfm_layers
from tfmeta import losses as tfm_losses

BN_MODES = ("transductive", "support", "running")
BATCH_KEYS = ("support_x", "support_y", "query_x", "query_y")

Task = dict[str, tf.Tensor]


class MetaStep(NamedTuple):
    """Everything one meta-training step produces for the trainer.

    Every floating-point entry is a SUM over the local tasks divided by the
    global number of tasks, so a cross-replica SUM yields the global mean.

    Attributes:
      grads: meta-gradients aligned with ``model.trainable_variables``.
      metrics: scalar float32 metrics (see the algorithm's ``meta_gradients``).
      non_trainable: values aligned with ``model.non_trainable_variables``
        after each task's adaptation (batch-norm moving statistics updated by
        the support-set passes). Non-floating entries (e.g. RNG seed states)
        hold the last task's value; assign with
        :func:`tfmeta.functional.assign_floating`, which skips them.
    """

    grads: list[tf.Tensor]
    metrics: dict[str, tf.Tensor]
    non_trainable: list[tf.Tensor]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _count(t: tf.Tensor, axis: int) -> int | None:
    shape = t.shape
    return shape[axis] if shape.rank is not None and shape.rank > axis else None


def _check_pair(x: tf.Tensor, y: tf.Tensor, x_name: str, y_name: str, axes: int) -> None:
    """Raises ValueError if the leading ``axes`` dimensions of x and y differ."""
    for axis in range(axes):
        nx, ny = _count(x, axis), _count(y, axis)
        if nx is not None and ny is not None and nx != ny:
            what = "tasks" if axes == 2 and axis == 0 else "examples"
            raise ValueError(
                f"{x_name} has {nx} {what} but {y_name} has {ny} "
                f"(shapes {x.shape} and {y.shape}); they must match"
            )


class MetaLearner:
    """Shared machinery of the gradient-based meta-learners.

    Subclasses implement ``_adapt`` (the inner loop) and ``meta_step``.

    Batch-norm modes (``bn_mode``):
      * ``"transductive"`` (MAML's original setting): every forward pass runs
        in training mode, so the support and the query set are each
        normalised with their own batch statistics, at training and at
        evaluation time. Query predictions therefore depend on the other
        query examples.
      * ``"support"``: the query set is normalised with the statistics of the
        support set computed with the adapted weights; each query prediction
        depends only on its own input and the support set. Needs
        :class:`tfmeta.layers.BatchNorm`.
      * ``"running"``: the query set is normalised with the model's moving
        statistics (inference mode). The trainer must keep them up to date by
        assigning ``MetaStep.non_trainable`` after every step.
    In every mode the inner loop runs the support set in training mode.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        inner_lr: float,
        inner_steps: int,
        eval_inner_steps: int | None,
        loss: str | Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
        inner_grad_clip: float | None,
        bn_mode: str,
    ):
        F.check_built(model)
        self.model = model
        self.inner_lr = _positive_float("inner_lr", inner_lr)
        self.inner_steps = _positive_int("inner_steps", inner_steps)
        self.eval_inner_steps = (
            self.inner_steps
            if eval_inner_steps is None
            else _positive_int("eval_inner_steps", eval_inner_steps)
        )
        self.inner_grad_clip = (
            None if inner_grad_clip is None else _positive_float("inner_grad_clip", inner_grad_clip)
        )
        if bn_mode not in BN_MODES:
            raise ValueError(f"unknown bn_mode {bn_mode!r}; allowed: {list(BN_MODES)}")
        if bn_mode == "support":
            foreign = tfm_layers.keras_batch_norm_layers(model)
            if foreign:
                raise ValueError(
                    "bn_mode='support' needs tfmeta.layers.BatchNorm, which records batch "
                    f"statistics; the model has keras BatchNormalization layers "
                    f"{[layer.name for layer in foreign]}"
                )
        self.bn_mode = bn_mode
        self._bn_index = tfm_layers.batch_statistics_index(model)
        self.loss_name = loss if isinstance(loss, str) else None
        self.loss_fn = tfm_losses.get(loss)
        self.accuracy_fn = tfm_losses.accuracy(loss)

    # ------------------------------------------------------------------ metrics
    @property
    def metric_names(self) -> tuple[str, ...]:
        """Names of the metrics returned by ``meta_gradients`` and ``evaluate``."""
        if self.accuracy_fn is not None:
            return ("loss", "loss_pre", "accuracy_pre", "accuracy_post")
        return ("loss", "loss_pre")

    # ----------------------------------------------------------- input checks
    def _check_labels(self, y: tf.Tensor, outputs: tf.Tensor, name: str) -> tf.Tensor:
        """Checks classification labels are in range; returns ``y``.

        Eagerly the check is a Python ValueError; in a graph it is a
        ``tf.debugging`` assertion (an InvalidArgumentError at run time) with
        the same message.
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

    @staticmethod
    def _check_batch(batch: Mapping[str, tf.Tensor]) -> Task:
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise ValueError(f"batch is missing keys {missing}; expected {list(BATCH_KEYS)}")
        b = {k: tf.convert_to_tensor(batch[k]) for k in BATCH_KEYS}
        _check_pair(b["support_x"], b["support_y"], "support_x", "support_y", axes=2)
        _check_pair(b["query_x"], b["query_y"], "query_x", "query_y", axes=2)
        _check_pair(b["support_x"], b["query_x"], "support_x", "query_x", axes=1)
        return b

    @staticmethod
    def _steps(steps: int | None, default: int) -> int:
        return default if steps is None else _positive_int("steps", steps)

    # ------------------------------------------------------- forward passes
    def _task_loss(self, y: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
        """Mean per-example loss of one task (float32 or wider)."""
        return tf.reduce_mean(self.loss_fn(y, outputs))

    def _support_loss(
        self,
        params: list[tf.Tensor],
        nt: list[tf.Tensor],
        x: tf.Tensor,
        y: tf.Tensor,
        training: bool,
    ) -> tuple[tf.Tensor, list[tf.Tensor]]:
        outputs, nt = F.forward(self.model, params, nt, x, training=training)
        y = self._check_labels(y, outputs, "support")
        return self._task_loss(y, outputs), nt

    def _predict(
        self,
        params: list[tf.Tensor],
        nt: list[tf.Tensor],
        x: tf.Tensor,
        support_x: tf.Tensor | None,
        training: bool | None,
    ) -> tf.Tensor:
        if self.bn_mode == "transductive":
            training = True if training is None else training
            return F.forward(self.model, params, nt, x, training=training)[0]
        if self.bn_mode == "running":
            training = False if training is None else training
            return F.forward(self.model, params, nt, x, training=training)[0]
        # "support": record the support statistics under `params`, then
        # normalise x with them in inference mode.
        if support_x is None:
            raise ValueError("bn_mode='support' needs support_x to normalise the query set")
        _, nt_support = F.forward(self.model, params, nt, support_x, training=True)
        nt_query = tfm_layers.with_batch_statistics(nt_support, self._bn_index)
        training = False if training is None else training
        return F.forward(self.model, params, nt_query, x, training=training)[0]

    def _clip(self, grads: list[tf.Tensor]) -> list[tf.Tensor]:
        if self.inner_grad_clip is None:
            return grads
        return F.clip_by_global_norm(grads, self.inner_grad_clip)

    def _support_gradients(
        self, fast: list[tf.Tensor], nt: list[tf.Tensor], x: tf.Tensor, y: tf.Tensor,
        training: bool,
    ) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        """Clipped gradients of the support loss at ``fast``, and the non-trainable values after."""
        with tf.GradientTape() as tape:
            tape.watch(fast)
            loss, nt = self._support_loss(fast, nt, x, y, training)
        grads = tape.gradient(loss, fast, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return self._clip(grads), nt

    def inner_state(self, params: list[tf.Tensor]) -> list[tf.Tensor]:
        """The inner optimiser's initial state for ``params`` (empty for SGD)."""
        del params
        return []

    def inner_step(
        self,
        fast: list[tf.Tensor],
        state: list[tf.Tensor],
        nt: list[tf.Tensor],
        x: tf.Tensor,
        y: tf.Tensor,
        t: int | tf.Tensor,
        *,
        training: bool = True,
    ) -> tuple[list[tf.Tensor], list[tf.Tensor], list[tf.Tensor]]:
        """One inner update on ``(x, y)``: the single step every inner loop is made of.

        Args:
          fast: current fast parameters.
          state: inner optimiser state (from :meth:`inner_state` or the previous step).
          nt: non-trainable values (batch-norm statistics) before the step.
          x: support inputs of this step.
          y: support labels / targets of this step.
          t: 0-based step index (Python int, or a tensor inside a ``tf.while_loop``).
          training: run the forward pass in training mode.

        Returns:
          ``(fast, state, nt)`` after the step.
        """
        raise NotImplementedError

    def _adapt(
        self,
        params: list[tf.Tensor],
        nt: list[tf.Tensor],
        support_x: tf.Tensor,
        support_y: tf.Tensor,
        steps: int,
        training: bool,
    ) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        """The inner loop: returns ``(fast_params, non_trainable_after)``."""
        raise NotImplementedError

    # ------------------------------------------------------------ public API
    def adapt(
        self,
        support_x: tf.Tensor,
        support_y: tf.Tensor,
        *,
        steps: int | None = None,
        params: list[tf.Tensor] | None = None,
        training: bool = True,
    ) -> list[tf.Tensor]:
        """Adapts to one task's support set without modifying the model.

        Args:
          support_x: support inputs ``[S, ...]``.
          support_y: support labels / targets ``[S, ...]``.
          steps: inner steps; defaults to ``inner_steps``.
          params: starting parameters aligned with
            ``model.trainable_variables``; defaults to their current values.
          training: Keras ``training`` flag of the support passes.

        Returns:
          The adapted parameters, aligned with ``model.trainable_variables``.
        """
        support_x = tf.convert_to_tensor(support_x)
        support_y = tf.convert_to_tensor(support_y)
        _check_pair(support_x, support_y, "support_x", "support_y", axes=1)
        steps = self._steps(steps, self.inner_steps)
        if params is None:
            params = F.values(self.model.trainable_variables)
        elif len(params) != len(self.model.trainable_variables):
            raise ValueError(
                f"params has {len(params)} entries but the model has "
                f"{len(self.model.trainable_variables)} trainable variables"
            )
        nt = F.values(self.model.non_trainable_variables)
        fast, _ = self._adapt(list(params), nt, support_x, support_y, steps, training)
        return fast

    def predict(
        self,
        params: list[tf.Tensor],
        x: tf.Tensor,
        *,
        support_x: tf.Tensor | None = None,
        training: bool | None = None,
    ) -> tf.Tensor:
        """Model outputs under ``params``, with batch norm as ``bn_mode`` says.

        Args:
          params: parameters aligned with ``model.trainable_variables``
            (typically from :meth:`adapt`).
          x: inputs ``[Q, ...]``.
          support_x: the task's support inputs; required for
            ``bn_mode="support"`` (normalisation statistics), ignored otherwise.
          training: Keras ``training`` flag of the call on ``x``; None picks
            the mode's choice (True for "transductive", False otherwise).

        Returns:
          The model outputs for ``x``.
        """
        nt = F.values(self.model.non_trainable_variables)
        x = tf.convert_to_tensor(x)
        if support_x is not None:
            support_x = tf.convert_to_tensor(support_x)
        return self._predict(list(params), nt, x, support_x, training)

    def _task_metrics(
        self,
        theta: list[tf.Tensor],
        fast: list[tf.Tensor],
        nt: list[tf.Tensor],
        task: Task,
        loss_post: tf.Tensor | None = None,
        out_post: tf.Tensor | None = None,
    ) -> dict[str, tf.Tensor]:
        """Pre/post-adaptation query metrics of one task, float32 scalars."""
        qx, qy, sx = task["query_x"], task["query_y"], task["support_x"]
        out_pre = tf.stop_gradient(self._predict(theta, nt, qx, sx, None))
        qy = self._check_labels(qy, out_pre, "query")
        if out_post is None:
            out_post = self._predict(fast, nt, qx, sx, None)
        out_post = tf.stop_gradient(out_post)
        if loss_post is None:
            loss_post = self._task_loss(qy, out_post)
        metrics = {
            "loss": tf.cast(tf.stop_gradient(loss_post), tf.float32),
            "loss_pre": tf.cast(self._task_loss(qy, out_pre), tf.float32),
        }
        if self.accuracy_fn is not None:
            metrics["accuracy_pre"] = tf.reduce_mean(self.accuracy_fn(qy, out_pre))
            metrics["accuracy_post"] = tf.reduce_mean(self.accuracy_fn(qy, out_post))
        return metrics

    def evaluate(
        self, batch: Mapping[str, tf.Tensor], *, steps: int | None = None
    ) -> dict[str, tf.Tensor]:
        """Per-task metrics after adaptation, for evaluation.

        Args:
          batch: ``{"support_x": [B, S, ...], "support_y": [B, S, ...],
            "query_x": [B, Q, ...], "query_y": [B, Q, ...]}``.
          steps: inner steps; defaults to ``eval_inner_steps``.

        Returns:
          ``metric_names`` -> float32 ``[B]`` (one value per task): ``loss``
          and ``accuracy_post`` after adaptation, ``loss_pre`` and
          ``accuracy_pre`` before.
        """
        batch = self._check_batch(batch)
        steps = self._steps(steps, self.eval_inner_steps)
        theta = F.values(self.model.trainable_variables)
        nt = F.values(self.model.non_trainable_variables)

        def one_task(task: Task) -> tuple[dict, dict]:
            fast, _ = self._adapt(theta, nt, task["support_x"], task["support_y"], steps, True)
            fast = F.stop_gradient(fast)
            return {}, self._task_metrics(theta, fast, nt, task)

        specs = {k: tf.TensorSpec([], tf.float32) for k in self.metric_names}
        _, per_task = self._per_task(one_task, batch, sum_init={}, stack_specs=specs)
        return per_task

    def meta_gradients(
        self, batch: Mapping[str, tf.Tensor], *, global_batch_size: int | None = None
    ) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        """Meta-gradients and metrics; see :meth:`meta_step` for the contract."""
        step = self.meta_step(batch, global_batch_size=global_batch_size)
        return step.grads, step.metrics

    def meta_step(
        self, batch: Mapping[str, tf.Tensor], *, global_batch_size: int | None = None
    ) -> MetaStep:
        """Gradients, metrics and non-trainable values; see :class:`MetaStep`."""
        raise NotImplementedError

    # ------------------------------------------------------------ task loop
    def _meta_step_from(
        self,
        task_fn: Callable[[list[tf.Tensor], list[tf.Tensor], Task], tuple[list, dict, list]],
        batch: Mapping[str, tf.Tensor],
        global_batch_size: int | None,
    ) -> MetaStep:
        """Sums ``task_fn(theta, nt, task) -> (grads, metrics, nt_after)``
        over the tasks and divides by ``global_batch_size``."""
        batch = self._check_batch(batch)
        local = _count(batch["support_x"], 0)
        if global_batch_size is None:
            if local is None:
                raise ValueError("the number of tasks is not static; pass global_batch_size")
            global_batch_size = local
        global_batch_size = _positive_int("global_batch_size", global_batch_size)
        theta = F.values(self.model.trainable_variables)
        nt = F.values(self.model.non_trainable_variables)

        def one_task(task: Task) -> tuple[tuple, dict]:
            grads, metrics, nt_after = task_fn(theta, nt, task)
            return (grads, metrics, nt_after), {}

        sum_init = (
            F.zeros_like(theta),
            {k: tf.zeros([], tf.float32) for k in self.metric_names},
            [tf.zeros_like(v) if F.is_floating(v) else v for v in nt],
        )
        (grads, metrics, nt_sum), _ = self._per_task(
            one_task, batch, sum_init=sum_init, stack_specs={}
        )
        inv = 1.0 / global_batch_size
        return MetaStep(
            grads=F.scale(grads, inv),
            metrics={k: v * inv for k, v in metrics.items()},
            non_trainable=F.map_floating(lambda v: v * tf.constant(inv, v.dtype), nt_sum),
        )

    @staticmethod
    def _per_task(
        fn: Callable[[Task], tuple[Any, Any]],
        batch: Task,
        *,
        sum_init: Any,
        stack_specs: Any,
    ) -> tuple[Any, Any]:
        """Runs ``fn`` on every task of ``batch``, one task at a time.

        ``fn(task) -> (to_sum, to_stack)``: ``to_sum`` is accumulated into
        ``sum_init`` (floating entries added; non-floating entries replaced),
        ``to_stack`` is stacked along a new leading task axis.

        This is the single place that decides how tasks are batched. It is a
        ``tf.while_loop`` holding one task's activations and gradients at a
        time (memory does not grow with the number of tasks), with no
        gradient flowing through the loop itself; it runs eagerly, under
        ``tf.function``, under XLA and inside ``strategy.run``. A vectorised
        implementation computing many tasks at once can replace it without
        changing any caller.
        """
        n = _count(batch["support_x"], 0)

        def add(acc: Any, to_sum: Any) -> Any:
            return tf.nest.map_structure(
                lambda a, x: a + tf.cast(x, a.dtype) if F.is_floating(a) else x, acc, to_sum
            )

        if tf.executing_eagerly() and n is not None:
            # Same computation as the graph loop below, without TensorArrays.
            acc, stacked = sum_init, []
            for i in range(n):
                to_sum, to_stack = fn({k: v[i] for k, v in batch.items()})
                acc = add(acc, to_sum)
                stacked.append(to_stack)
            return acc, tf.nest.map_structure(lambda _, *xs: tf.stack(xs), stack_specs, *stacked)

        if n is None:
            n = tf.shape(batch["support_x"])[0]
        arrays = tf.nest.map_structure(
            lambda s: tf.TensorArray(s.dtype, size=n, element_shape=s.shape), stack_specs
        )

        def body(i, acc, arrays):
            task = {k: tf.gather(v, i) for k, v in batch.items()}
            to_sum, to_stack = fn(task)
            acc = add(acc, to_sum)
            arrays = tf.nest.map_structure(lambda ta, x: ta.write(i, x), arrays, to_stack)
            return i + 1, acc, arrays

        _, acc, arrays = tf.while_loop(
            lambda i, *_: i < n,
            body,
            (tf.constant(0), sum_init, arrays),
            maximum_iterations=n,
        )
        return acc, tf.nest.map_structure(lambda ta: ta.stack(), arrays)


class MAML(MetaLearner):
    """Model-agnostic meta-learning (Finn et al., 2017), second or first order.

    Args:
      model: a built Keras 3 model (functional, Sequential or subclassed).
      inner_lr: inner SGD learning rate (> 0).
      inner_steps: inner steps during meta-training (>= 1).
      eval_inner_steps: inner steps in :meth:`evaluate`; defaults to
        ``inner_steps``.
      first_order: if True, inner gradients are treated as constants
        (first-order MAML): the meta-gradient is the query-loss gradient at
        the adapted parameters.
      loss: ``"sparse_categorical_crossentropy"`` (on logits),
        ``"binary_crossentropy"`` (on logits), ``"mse"``, or a callable
        ``(y_true, y_pred) -> [batch]`` per-example loss. Each task's loss is
        the mean over its examples.
      inner_grad_clip: if set, inner gradients are clipped to this global
        norm (differentiably, so second-order MAML stays exact).
      bn_mode: ``"transductive"``, ``"support"`` or ``"running"``; see
        :class:`MetaLearner`.

    Raises:
      ValueError: unbuilt model, non-positive ``inner_lr`` / steps / clip,
        unknown loss or ``bn_mode``.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        inner_lr: float,
        inner_steps: int,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        loss: str | Callable[[tf.Tensor, tf.Tensor], tf.Tensor] = "sparse_categorical_crossentropy",
        inner_grad_clip: float | None = None,
        bn_mode: str = "transductive",
    ):
        super().__init__(
            model,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            loss=loss,
            inner_grad_clip=inner_grad_clip,
            bn_mode=bn_mode,
        )
        self.first_order = bool(first_order)

    def inner_step(self, fast, state, nt, x, y, t, *, training=True):
        """One SGD step on the support loss (see :meth:`MetaLearner.inner_step`)."""
        del t
        grads, nt = self._support_gradients(fast, nt, x, y, training)
        if self.first_order:
            grads = F.stop_gradient(grads)
        return F.sgd_step(fast, grads, self.inner_lr), state, nt

    def _adapt(self, params, nt, support_x, support_y, steps, training):
        fast, state = list(params), self.inner_state(params)
        for t in range(steps):  # unrolled: `steps` is a static Python int
            fast, state, nt = self.inner_step(fast, state, nt, support_x, support_y, t,
                                              training=training)
        return fast, nt

    def _task_meta_gradient(self, theta, nt, task):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            fast, nt_after = self._adapt(
                theta, nt, task["support_x"], task["support_y"], self.inner_steps, True
            )
            out_q = self._predict(fast, nt, task["query_x"], task["support_x"], None)
            qy = self._check_labels(task["query_y"], out_q, "query")
            loss_q = self._task_loss(qy, out_q)
        grads = tape.gradient(loss_q, theta, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        metrics = self._task_metrics(theta, fast, nt, task, loss_post=loss_q, out_post=out_q)
        return grads, metrics, nt_after

    def meta_step(
        self, batch: Mapping[str, tf.Tensor], *, global_batch_size: int | None = None
    ) -> MetaStep:
        """Meta-gradients, metrics and non-trainable values for a batch of tasks.

        Second order (unless ``first_order``): a ``tf.GradientTape`` around
        every inner step, inside a tape around the whole adaptation. Each
        task's gradient is computed inside the task loop and summed.

        Args:
          batch: ``{"support_x": [B, S, ...], "support_y": [B, S, ...],
            "query_x": [B, Q, ...], "query_y": [B, Q, ...]}`` (the B local
            tasks).
          global_batch_size: total number of tasks across replicas; defaults
            to B.

        Returns:
          A :class:`MetaStep`. Gradients, metrics and floating non-trainable
          values are sums over the B local tasks divided by
          ``global_batch_size``: a cross-replica SUM gives the global mean.
          Metrics: ``loss`` (query loss after adaptation), ``loss_pre``, and
          for classification losses ``accuracy_pre`` / ``accuracy_post``.
        """
        return self._meta_step_from(self._task_meta_gradient, batch, global_batch_size)

    def meta_gradients(
        self, batch: Mapping[str, tf.Tensor], *, global_batch_size: int | None = None
    ) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        """``(grads, metrics)`` of :meth:`meta_step`.

        ``grads`` is aligned with ``model.trainable_variables``; grads and
        metrics are sums over the local tasks divided by
        ``global_batch_size`` (default: the local number of tasks B).
        """
        return super().meta_gradients(batch, global_batch_size=global_batch_size)
