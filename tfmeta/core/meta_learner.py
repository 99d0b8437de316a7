"""What every gradient-based meta-learner shares: the public API over one inner loop.

:class:`MetaLearner` hands a batch of tasks, in groups (:mod:`tfmeta.core.grouping` decides how many
tasks run together and loops over the groups), to the single inner loop
(:mod:`tfmeta.core.inner_loop`), and offers the one-task API (``adapt``, ``predict``), the batched API
(``adapt_and_predict``, ``evaluate``) and ``meta_step``. Inputs are checked by
:mod:`tfmeta.core.task_batch`. The algorithms (:class:`tfmeta.core.maml.MAML`,
:class:`tfmeta.core.reptile.Reptile`) only say what one group contributes to the meta-gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import keras
import tensorflow as tf

from tfmeta.core import batched, grouping, inner_loop, task_batch
from tfmeta.base.choices import BN_MODES
from tfmeta.core.task_batch import positive_float, positive_int
from tfmeta.core import functional as F
from tfmeta.core import layers as tfm_layers
from tfmeta.core.inner_loop import InnerLoop, InnerOptions, loop_steps

Task = task_batch.Task


class MetaStep(NamedTuple):
    """Everything one meta-training step produces for the trainer.

    Every floating-point entry is a SUM over the local tasks divided by the
    global number of tasks, so a cross-replica SUM yields the global mean.

    Attributes:
      grads: meta-gradients aligned with the learner's ``meta_variables`` (the model's trainable
        variables, then the inner loop's learned ones).
      metrics: scalar float32 metrics (see the algorithm's ``meta_step``).
      non_trainable: values aligned with the learner's ``state_variables`` after each task's
        adaptation (batch-norm moving statistics updated by the support-set passes). Non-floating
        entries (e.g. RNG seed states) hold the last task's value; assign with
        :func:`tfmeta.core.functional.assign_floating`, which skips them.
    """

    grads: list[tf.Tensor]
    metrics: dict[str, tf.Tensor]
    non_trainable: list[tf.Tensor]


class MetaLearner:
    """Shared machinery of the gradient-based meta-learners; see the module docstring.

    Batch-norm modes (``bn_mode``), i.e. how the query set is normalised:
      * ``"transductive"`` (MAML's original setting): with its own batch statistics, so a query
        prediction depends on the other queries.
      * ``"support"``: with the statistics of the support set under the adapted weights; each
        query prediction depends only on itself and the support set. Needs
        :class:`tfmeta.core.layers.BatchNorm`.
      * ``"running"``: with the model's moving statistics (the trainer keeps them up to date by
        assigning ``MetaStep.non_trainable`` after every step).
    In every mode the inner loop runs the support set in training mode.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        inner_steps: int,
        eval_inner_steps: int | None,
        loss: str | Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
        bn_mode: str,
        options: InnerOptions,
        tasks_in_parallel: int | str,
    ):
        F.check_built(model)
        self.model = model
        self.inner_steps = positive_int("inner_steps", inner_steps)
        self.eval_inner_steps = (
            self.inner_steps if eval_inner_steps is None
            else positive_int("eval_inner_steps", eval_inner_steps))
        options.lr = positive_float("inner_lr", options.lr)
        if options.grad_clip is not None:
            options.grad_clip = positive_float("inner_grad_clip", options.grad_clip)
        if bn_mode not in BN_MODES:
            raise ValueError(f"unknown bn_mode {bn_mode!r}; allowed: {list(BN_MODES)}")
        if bn_mode == "support" or options.per_step_bn:
            what = "bn_mode='support'" if bn_mode == "support" else "per-step batch norm"
            foreign = tfm_layers.keras_batch_norm_layers(model)
            if foreign:
                raise ValueError(
                    f"{what} needs tfmeta.core.layers.BatchNorm, which records batch statistics; the "
                    f"model has keras BatchNormalization layers {[la.name for la in foreign]}")
            if options.per_step_bn and not tfm_layers.batch_norm_layers(model):
                raise ValueError(f"per-step batch norm needs a model with tfmeta.core.layers.BatchNorm "
                                 f"layers; model {model.name!r} has none")
        self.bn_mode = bn_mode
        self.tasks_in_parallel = grouping.check_tasks_in_parallel(tasks_in_parallel)
        self.inner = InnerLoop(model, loss=loss, bn_mode=bn_mode, options=options,
                               batched_forward=self.tasks_in_parallel != 1)
        if self.inner.unsupported:
            inner_loop.log_fallback(model, self.inner.unsupported)
        # Whether a task-batched pass can run grouped convolutions (the "auto" rule's input).
        self._grouped_conv = (not batched.has_conv(model) or grouping.on_accelerator()
                              or batched.cpu_grouped_conv_gradients())
        self.loss_name = self.inner.loss_name
        self.loss_fn = self.inner.loss_fn
        self.accuracy_fn = self.inner.accuracy_fn

    # ------------------------------------------------------------------------ properties
    @property
    def inner_lr(self) -> float:
        """The inner learning rate (the initial value when it is learned)."""
        return self.inner.options.lr

    @property
    def inner_grad_clip(self) -> float | None:
        return self.inner.options.grad_clip

    @property
    def meta_variables(self) -> list[Any]:
        """What the outer loop trains: the model's trainable variables, then the inner loop's."""
        return self.inner.meta_variables

    @property
    def state_variables(self) -> list[Any]:
        """The model's non-trainable variables, then the per-step batch-norm statistics."""
        return self.inner.state_variables

    @property
    def checkpointables(self) -> dict[str, Any]:
        """Objects a checkpoint or SavedModel must track besides the model."""
        return {"inner_loop": self.inner.variables}

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Names of the metrics returned by ``meta_step`` and ``evaluate``."""
        if self.accuracy_fn is not None:
            return ("loss", "loss_pre", "accuracy_pre", "accuracy_post")
        return ("loss", "loss_pre")

    def group_size(self, num_tasks: int | None, examples_per_task: int | None = None, *,
                   second_order: bool = True) -> int | None:
        """Tasks computed together for a batch of ``num_tasks`` (None: all, however many)."""
        return grouping.group_size(self.tasks_in_parallel, num_tasks, examples_per_task,
                                   batched=self.inner.batched is not None,
                                   second_order=second_order, grouped_conv=self._grouped_conv)

    # ----------------------------------------------------------------------- input checks
    def _check_batch(self, batch: Mapping[str, tf.Tensor]) -> Task:
        return task_batch.check_batch(batch, loss_name=self.loss_name)

    @staticmethod
    def _steps(steps: int | None, default: int, *, allow_zero: bool = False) -> int:
        if steps is None:
            return default
        if allow_zero and steps == 0 and not isinstance(steps, bool):
            return 0
        return positive_int("steps", steps)

    # ------------------------------------------------------------------------- the task loop
    def _group_for(self, batch: Task, *, second_order: bool) -> int | None:
        examples = sum(grouping.static_count(batch[k], 1) or 0 for k in ("support_x", "query_x"))
        return self.group_size(grouping.static_count(batch["support_x"], 0), examples,
                               second_order=second_order)

    @property
    def _memory_bound(self) -> bool:
        """Whether a meta-step must hold one group's activations at a time (remat)."""
        return False

    def _second_order(self, **kwargs: Any) -> bool:
        """Whether a meta-step with these arguments differentiates through the inner loop."""
        return False

    # ---------------------------------------------------------------------------- metrics
    def _metrics(self, theta: list[tf.Tensor], state: list[tf.Tensor], fast: list[tf.Tensor],
                 task: Task, *, out_post: tf.Tensor, loss_post: tf.Tensor | None = None,
                 bn_mode: str | None = None) -> dict[str, tf.Tensor]:
        """Pre/post-adaptation query metrics of every task of ``task``: float32 ``[T]`` each."""
        qx, qy, sx = task["query_x"], task["query_y"], task["support_x"]
        start = self.inner.start(theta, state, inner_loop.num_tasks(qx)).fast
        out_pre = tf.stop_gradient(self.inner.predict(
            theta, state, start, qx, support_x=sx, steps_taken=0, bn_mode=bn_mode))
        qy = self.inner.check_labels(qy, out_pre, "query")
        out_post = tf.stop_gradient(out_post)
        if loss_post is None:
            loss_post = self.inner.task_loss(qy, out_post)
        metrics = {
            "loss": tf.cast(tf.stop_gradient(loss_post), tf.float32),
            "loss_pre": tf.cast(self.inner.task_loss(qy, out_pre), tf.float32),
        }
        if self.accuracy_fn is not None:
            metrics["accuracy_pre"] = self.inner.task_accuracy(qy, out_pre)
            metrics["accuracy_post"] = self.inner.task_accuracy(qy, out_post)
        return metrics

    def _adapted_outputs(self, theta: list[tf.Tensor], state: list[tf.Tensor], task: Task,
                         steps: int | tf.Tensor, bn_mode: str | None
                         ) -> tuple[list[tf.Tensor], tf.Tensor]:
        """Adapts a group of tasks (no meta-gradient) and predicts their queries."""
        steps = loop_steps(steps)  # nothing differentiates through it: long loops stay small
        adapted = self.inner.adapt(theta, state, task["support_x"], task["support_y"], steps,
                                   first_order=True)
        fast = F.stop_gradient(adapted.fast)
        out = self.inner.predict(theta, state, fast, task["query_x"], support_x=task["support_x"],
                                 steps_taken=steps, bn_mode=bn_mode)
        return fast, out

    def _values(self) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        return F.values(self.meta_variables), F.values(self.state_variables)

    # ------------------------------------------------------------------------- public API
    def adapt(self, support_x: tf.Tensor, support_y: tf.Tensor, *, steps: int | None = None,
              params: list[tf.Tensor] | None = None, training: bool = True) -> list[tf.Tensor]:
        """Adapts to one task's support set without modifying the model.

        Args:
          support_x: support inputs ``[S, ...]``.
          support_y: support labels / targets ``[S, ...]``.
          steps: inner steps; defaults to ``inner_steps``.
          params: starting parameters aligned with ``model.trainable_variables``; defaults to
            their current values.
          training: Keras ``training`` flag of the support passes.

        Returns:
          The adapted parameters, aligned with ``model.trainable_variables``.
        """
        support_x = tf.convert_to_tensor(support_x)
        support_y = task_batch.check_label_shape(tf.convert_to_tensor(support_y), "support_y",
                                                 task_axes=1, loss_name=self.loss_name)
        task_batch.check_pair(support_x, support_y, "support_x", "support_y", axes=1)
        steps = self._steps(steps, self.inner_steps)
        theta, state = self._values()
        if params is not None:
            if len(params) != len(self.model.trainable_variables):
                raise ValueError(f"params has {len(params)} entries but the model has "
                                 f"{len(self.model.trainable_variables)} trainable variables")
            theta = [*params, *theta[len(params):]]
        adapted = self.inner.adapt(theta, state, support_x[None], support_y[None], steps,
                                   first_order=False, training=training)
        return [p[0] for p in adapted.fast]

    def predict(self, params: list[tf.Tensor], x: tf.Tensor, *,
                support_x: tf.Tensor | None = None, bn_mode: str | None = None,
                steps: int | None = None) -> tf.Tensor:
        """Model outputs for one task's ``x [Q, ...]`` under ``params``.

        Args:
          params: parameters aligned with ``model.trainable_variables`` (from :meth:`adapt`).
          x: inputs ``[Q, ...]``.
          support_x: the task's support inputs; needed for ``bn_mode="support"``.
          bn_mode: how queries are normalised; defaults to the learner's ``bn_mode``.
          steps: inner steps ``params`` were adapted with (selects the per-step batch-norm slot);
            defaults to ``eval_inner_steps``.
        """
        theta, state = self._values()
        x = tf.convert_to_tensor(x)
        sx = None if support_x is None else tf.convert_to_tensor(support_x)[None]
        fast = [tf.convert_to_tensor(p)[None] for p in params]
        steps = self.eval_inner_steps if steps is None else steps
        return self.inner.predict(theta, state, fast, x[None], support_x=sx,
                                  steps_taken=steps, bn_mode=bn_mode)[0]

    def adapt_and_predict(self, support_x: tf.Tensor, support_y: tf.Tensor,
                          query_x: tf.Tensor, *, steps: int | tf.Tensor | None = None,
                          bn_mode: str | None = None) -> tf.Tensor:
        """Adapts to each of ``B`` tasks and predicts its queries: outputs ``[B, Q, ...]``.

        The tasks are computed in groups (``tasks_in_parallel``); with a run-time ``B`` (serving)
        all at once when the model runs batched, else one at a time.

        Args:
          support_x, support_y: ``[B, S, ...]``.
          query_x: ``[B, Q, ...]``.
          steps: inner steps, an int or a scalar int32 tensor (a ``tf.while_loop``); defaults to
            ``eval_inner_steps``. 0 predicts with the meta-learned initialisation.
          bn_mode: how queries are normalised; defaults to the learner's ``bn_mode``.
        """
        steps = self.eval_inner_steps if steps is None else steps
        theta, state = self._values()
        batch = {"support_x": tf.convert_to_tensor(support_x),
                 "support_y": tf.convert_to_tensor(support_y),
                 "query_x": tf.convert_to_tensor(query_x)}

        def one_group(task: Task) -> tuple[dict, tf.Tensor]:
            return {}, self._adapted_outputs(theta, state, task, steps, bn_mode)[1]

        group = grouping.group_size(self.tasks_in_parallel,
                                    grouping.static_count(batch["support_x"], 0),
                                    batched=self.inner.batched is not None, serving=True)
        out_shape = self._output_spec(batch["query_x"])
        _, outputs = grouping.over_groups(one_group, batch, group=group, sum_init={},
                                       stack_specs=out_shape)
        return outputs

    def _output_spec(self, query_x: tf.Tensor) -> tf.TensorSpec:
        spec = self.model.compute_output_spec(
            keras.KerasTensor([None, *query_x.shape[2:]], dtype=query_x.dtype))
        return tf.TensorSpec([query_x.shape[1], *spec.shape[1:]], spec.dtype)

    def evaluate(self, batch: Mapping[str, tf.Tensor], *, steps: int | None = None,
                 bn_mode: str | None = None) -> dict[str, tf.Tensor]:
        """Per-task metrics after adaptation, for evaluation.

        Args:
          batch: ``{"support_x": [B, S, ...], "support_y": [B, S, ...],
            "query_x": [B, Q, ...], "query_y": [B, Q, ...]}``.
          steps: inner steps; defaults to ``eval_inner_steps``.
          bn_mode: how queries are normalised; defaults to the learner's ``bn_mode``.

        Returns:
          ``metric_names`` -> float32 ``[B]`` (one value per task): ``loss`` and
          ``accuracy_post`` after adaptation, ``loss_pre`` and ``accuracy_pre`` before.
        """
        batch = self._check_batch(batch)
        steps = self._steps(steps, self.eval_inner_steps)
        theta, state = self._values()

        def one_group(task: Task) -> tuple[dict, dict]:
            fast, out = self._adapted_outputs(theta, state, task, steps, bn_mode)
            return {}, self._metrics(theta, state, fast, task, out_post=out, bn_mode=bn_mode)

        specs = {k: tf.TensorSpec([], tf.float32) for k in self.metric_names}
        _, per_task = grouping.over_groups(one_group, batch,
                                        group=self._group_for(batch, second_order=False),
                                        sum_init={}, stack_specs=specs)
        return per_task

    def meta_gradients(self, batch: Mapping[str, tf.Tensor], *,
                       global_batch_size: int | None = None, **kwargs: Any
                       ) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        """``(grads, metrics)`` of :meth:`meta_step`."""
        step = self.meta_step(batch, global_batch_size=global_batch_size, **kwargs)
        return step.grads, step.metrics

    def meta_step(self, batch: Mapping[str, tf.Tensor], *,
                  global_batch_size: int | None = None, **kwargs: Any) -> MetaStep:
        """Gradients, metrics and non-trainable values; see :class:`MetaStep`."""
        raise NotImplementedError

    def _group_contribution(self, theta: list[tf.Tensor], state: list[tf.Tensor], task: Task,
                            **kwargs: Any) -> tuple[list[tf.Tensor], dict, list[tf.Tensor]]:
        """One group's ``(summed grads, per-task metrics [T], state after [T, ...])``."""
        raise NotImplementedError

    def _meta_step(self, batch: Mapping[str, tf.Tensor], global_batch_size: int | None,
                   **kwargs: Any) -> MetaStep:
        """Sums every group's contribution and divides by ``global_batch_size``."""
        batch = self._check_batch(batch)
        local = grouping.static_count(batch["support_x"], 0)
        if global_batch_size is None:
            if local is None:
                raise ValueError("the number of tasks is not static; pass global_batch_size")
            global_batch_size = local
        global_batch_size = positive_int("global_batch_size", global_batch_size)
        theta, state = self._values()

        def one_group(task: Task) -> tuple[tuple, dict]:
            grads, metrics, state_after = self._group_contribution(theta, state, task, **kwargs)
            metrics = {k: tf.reduce_sum(v) for k, v in metrics.items()}
            return (grads, metrics, grouping.sum_tasks(state_after)), {}

        sum_init = (
            F.zeros_like(theta),
            {k: tf.zeros([], tf.float32) for k in self.metric_names},
            [tf.zeros_like(v) if F.is_floating(v) else v for v in state],
        )
        group = self._group_for(batch, second_order=self._second_order(**kwargs))
        (grads, metrics, state_sum), _ = grouping.over_groups(
            one_group, batch, group=group, sum_init=sum_init, stack_specs={},
            one_at_a_time=self._memory_bound)
        inv = 1.0 / global_batch_size
        return MetaStep(
            grads=F.scale(grads, inv),
            metrics={k: v * inv for k, v in metrics.items()},
            non_trainable=F.map_floating(lambda v: v * tf.constant(inv, v.dtype), state_sum),
        )
