"""MAML and its relatives for any built Keras 3 model: one algorithm, options of one inner loop.

* :class:`MAML` (Finn et al., 2017): second order (a nested ``tf.GradientTape`` through the inner
  loop) or first order.
* :class:`MAMLpp` (Antoniou et al., 2019, "How to train your MAML"): MAML with learned per-layer
  per-step inner learning rates, per-step batch-norm weights and statistics, and the multi-step
  loss. Derivative-order annealing and the cosine meta learning rate are the trainer's (they
  depend on the meta-iteration): ``meta_step(..., first_order=...)`` and the outer schedule.
* :class:`MetaSGD` (Li et al., 2017): a learned inner learning rate per parameter.
* :class:`ANIL` (Raghu et al., 2020): only the head adapts in the inner loop.

The model is called through ``keras.Layer.stateless_call`` (one task) or the task-batched forward
pass (:mod:`tfmeta.core.batched`), so adaptation never touches the model's variables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras
import tensorflow as tf

from tfmeta.base import choices
from tfmeta.core import inner_loop
from tfmeta.core import remat as tfm_remat
from tfmeta.core.inner_loop import InnerOptions
from tfmeta.core.meta_learner import MetaLearner, MetaStep  # noqa: F401  (MetaStep: re-exported)
from tfmeta.core.task_batch import positive_int


def multi_step_loss_weights(steps: int, epoch: Any, msl_epochs: int) -> tf.Tensor:
    """MAML++'s per-step query-loss weights at ``epoch`` (``[steps]``, float32).

    All steps start at ``1/steps``; every non-final weight decays linearly to ``0.03/steps``
    over ``msl_epochs`` epochs while the final step's grows, exactly as
    ``get_per_step_loss_importance_vector`` of the reference implementation.
    """
    epoch = tf.cast(epoch, tf.float32)
    n = float(steps)
    decay = 1.0 / n / msl_epochs
    floor = 0.03 / n
    early = tf.maximum(1.0 / n - epoch * decay, floor) * tf.ones([steps - 1])
    last = tf.minimum(1.0 / n + epoch * (n - 1) * decay, 1.0 - (n - 1) * floor)
    return tf.concat([early, [last]], 0)


class MAML(MetaLearner):
    """Model-agnostic meta-learning (Finn et al., 2017) and its MAML++ / Meta-SGD / ANIL options.

    Args:
      model: a built Keras 3 model (functional, Sequential or subclassed).
      inner_lr: inner SGD learning rate (> 0); the initial value when it is learned.
      inner_steps: inner steps during meta-training (>= 1).
      eval_inner_steps: inner steps in :meth:`evaluate`; defaults to ``inner_steps``.
      first_order: treat inner gradients as constants (first-order MAML): the meta-gradient is
        the query-loss gradient at the adapted parameters.
      loss: ``"sparse_categorical_crossentropy"`` (on logits), ``"binary_crossentropy"`` (on
        logits), ``"mse"``, or a callable ``(y_true, y_pred) -> [batch]`` per-example loss. Each
        task's loss is the mean over its examples.
      inner_grad_clip: if set, each task's inner gradients are clipped to this global norm
        (differentiably, so second-order MAML stays exact).
      bn_mode: ``"transductive"``, ``"support"`` or ``"running"``; see
        :class:`tfmeta.core.meta_learner.MetaLearner`.
      tasks_in_parallel: ``1``, an int ``k``, ``"all"`` or ``"auto"``; see
        :mod:`tfmeta.core.meta_learner`.
      learned_lr: ``"none"``, ``"per_layer_step"`` (MAML++ LSLR) or ``"per_parameter"``
        (Meta-SGD); learned rates are meta-parameters (in ``meta_variables``).
      adapt: ``"all"``, or ``"head"`` (ANIL: only the layer owning the last trainable variable
        adapts; the rest is meta-learned in the outer loop only).
      adapt_batch_norm: whether batch-norm scales and offsets adapt in the inner loop.
      per_step_bn: per-step batch-norm weights and statistics (MAML++ BNWB + BNRS); batch-norm
        weights then do not adapt in the inner loop (they are learned per step instead).
      multi_step_loss: MAML++'s multi-step loss: the meta-objective weighs the query loss after
        every inner step (:func:`multi_step_loss_weights`), while the trainer says it is on.
      msl_epochs: epochs over which the multi-step weights anneal towards the last step.
      iterations_per_epoch: meta-iterations per epoch (MAML++ counts 500).
      remat: ``"none"`` (the meta-gradient's backward pass keeps every inner step's activations)
        or ``"steps"`` (it keeps only each step's fast weights and statistics and re-runs a step
        when it reaches it: memory bounded in the inner steps for about one more forward and
        inner backward per step; :mod:`tfmeta.core.remat`), or ``"blocks"`` (as ``"steps"``,
        and the re-run step keeps only the activations between the model's blocks, recomputing
        one block at a time: residual blocks of ResNet-12, conv blocks of conv4, otherwise
        layers; :mod:`tfmeta.core.blocks`; about one more forward pass per step again). The
        gradients are the same.

    Raises:
      ValueError: unbuilt model, non-positive ``inner_lr`` / steps / clip, unknown loss,
        ``bn_mode``, ``learned_lr``, ``adapt`` or ``tasks_in_parallel``, or options the model
        cannot support (e.g. per-step batch norm without :class:`tfmeta.core.layers.BatchNorm`).
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
        tasks_in_parallel: int | str = "auto",
        learned_lr: str = "none",
        adapt: str = "all",
        adapt_batch_norm: bool = True,
        per_step_bn: bool = False,
        multi_step_loss: bool = False,
        msl_epochs: int = 10,
        iterations_per_epoch: int = 500,
        remat: str = "none",
    ):
        if remat not in choices.REMAT:
            raise ValueError(f"unknown remat {remat!r}; allowed: {list(choices.REMAT)}")
        if learned_lr not in choices.LEARNED_LR:
            raise ValueError(f"unknown learned_lr {learned_lr!r}; allowed: "
                             f"{list(choices.LEARNED_LR)}")
        if adapt not in choices.ADAPT:
            raise ValueError(f"unknown adapt {adapt!r}; allowed: {list(choices.ADAPT)}")
        options = InnerOptions(
            lr=inner_lr, grad_clip=inner_grad_clip, learned_lr=learned_lr, adapt=adapt,
            adapt_batch_norm=adapt_batch_norm, per_step_bn=per_step_bn,
            per_step_slots=positive_int("inner_steps", inner_steps))
        super().__init__(model, inner_steps=inner_steps, eval_inner_steps=eval_inner_steps,
                         loss=loss, bn_mode=bn_mode, options=options,
                         tasks_in_parallel=tasks_in_parallel)
        self.first_order = bool(first_order)
        self.multi_step_loss = bool(multi_step_loss)
        self.msl_epochs = positive_int("msl_epochs", msl_epochs)
        self.iterations_per_epoch = positive_int("iterations_per_epoch", iterations_per_epoch)
        self.remat = remat

    def _second_order(self, *, first_order=None, **unused) -> bool:
        return not (self.first_order if first_order is None else first_order)

    def _group_contribution(self, theta, state, task, *, iteration=None, first_order=None,
                            multi_step_loss=None):
        inner = self.inner
        first_order = self.first_order if first_order is None else first_order
        msl = self.multi_step_loss if multi_step_loss is None else multi_step_loss
        msl = msl and self.inner_steps > 1
        sx, sy, qx, qy = (task[k] for k in ("support_x", "support_y", "query_x", "query_y"))
        if self.remat != "none":
            return self._rematerialised(theta, state, task, iteration=iteration,
                                        first_order=first_order, msl=msl)
        step_outputs: list[tf.Tensor] = []

        def after_step(t: int, loop: inner_loop.LoopState) -> None:
            step_outputs.append(inner.predict(theta, state, loop.fast, qx, support_x=sx,
                                              steps_taken=t + 1))

        with tf.GradientTape() as tape:
            tape.watch(theta)
            adapted = inner.adapt(theta, state, sx, sy, self.inner_steps, first_order=first_order,
                                  after_step=after_step if msl else None)
            out_q = step_outputs[-1] if msl else inner.predict(
                theta, state, adapted.fast, qx, support_x=sx, steps_taken=self.inner_steps)
            qy = inner.check_labels(qy, out_q, "query")
            loss_post = inner.task_loss(qy, out_q)
            objective = loss_post
            if msl:
                weights = self._msl_weights(iteration)
                objective = tf.add_n([tf.cast(weights[t], loss_post.dtype) * inner.task_loss(qy, o)
                                      for t, o in enumerate(step_outputs)])
            total = tf.reduce_sum(objective)
        grads = tape.gradient(total, theta, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        metrics = self._metrics(theta, state, adapted.fast, task, out_post=out_q,
                                loss_post=loss_post)
        return grads, metrics, [*adapted.batch_norm_stats, *adapted.inner_state]

    def _msl_weights(self, iteration: Any) -> tf.Tensor:
        epoch = 0 if iteration is None else iteration // self.iterations_per_epoch
        return multi_step_loss_weights(self.inner_steps, epoch, self.msl_epochs)

    @property
    def _memory_bound(self) -> bool:
        return self.remat != "none"

    def _rematerialised(self, theta, state, task, *, iteration, first_order: bool, msl: bool):
        """:meth:`_group_contribution` with remat (:func:`tfmeta.core.remat.meta_gradients`)."""
        inner = self.inner
        sx, sy, qx = task["support_x"], task["support_y"], task["query_x"]
        qy = inner.check_labels(task["query_y"], self._output_spec(qx), "query")
        weights = self._msl_weights(iteration) if msl else None

        blocks = self.remat == "blocks"

        def objective(k, th, loop: inner_loop.LoopState) -> tf.Tensor:
            out = inner.predict(th, state, loop.fast, qx, support_x=sx, steps_taken=k,
                                blockwise=blocks)
            loss = inner.task_loss(qy, out)
            if weights is not None:
                loss = tf.cast(tf.gather(weights, k - 1), loss.dtype) * loss
            return tf.reduce_sum(loss)

        grads, adapted = tfm_remat.meta_gradients(inner, theta, state, sx, sy, self.inner_steps,
                                                  first_order=first_order, objective=objective,
                                                  every_step=msl,
                                                  blocks=blocks)
        out_q = inner.predict(theta, state, adapted.fast, qx, support_x=sx,
                              steps_taken=self.inner_steps)
        metrics = self._metrics(theta, state, adapted.fast, task, out_post=out_q)
        return grads, metrics, [*adapted.batch_norm_stats, *adapted.inner_state]

    def meta_step(self, batch: Mapping[str, tf.Tensor], *, global_batch_size: int | None = None,
                  iteration: Any = None, first_order: bool | None = None,
                  multi_step_loss: bool | None = None) -> MetaStep:
        """Meta-gradients, metrics and non-trainable values for a batch of tasks.

        Second order (unless ``first_order``): a ``tf.GradientTape`` around every inner step,
        inside a tape around the whole adaptation of a group of tasks.

        Args:
          batch: ``{"support_x": [B, S, ...], "support_y": [B, S, ...], "query_x": [B, Q, ...],
            "query_y": [B, Q, ...]}`` (the B local tasks).
          global_batch_size: total number of tasks across replicas; defaults to B.
          iteration: the meta-iteration (int or tensor), for the multi-step loss weights.
          first_order: overrides the constructor's ``first_order`` (derivative-order annealing).
          multi_step_loss: overrides the constructor's ``multi_step_loss`` (it is switched off
            after ``msl_epochs``).

        Returns:
          A :class:`MetaStep`. Gradients (aligned with ``meta_variables``), metrics and floating
          non-trainable values are sums over the B local tasks divided by
          ``global_batch_size``: a cross-replica SUM gives the global mean. Metrics: ``loss``
          (query loss after adaptation), ``loss_pre``, and for classification losses
          ``accuracy_pre`` / ``accuracy_post``.
        """
        return self._meta_step(batch, global_batch_size, iteration=iteration,
                               first_order=first_order, multi_step_loss=multi_step_loss)


class MAMLpp(MAML):
    """MAML++ (Antoniou et al., 2019): MAML with every switch of "How to train your MAML" on.

    Learned per-layer per-step learning rates, per-step batch-norm weights and statistics (batch
    norm then does not adapt in the inner loop) and the multi-step loss. Each is still a keyword
    argument of :class:`MAML`, so they can be switched off one at a time.
    """

    def __init__(self, model: keras.Model, **kwargs: Any):
        kwargs.setdefault("learned_lr", "per_layer_step")
        kwargs.setdefault("per_step_bn", True)
        kwargs.setdefault("adapt_batch_norm", False)
        kwargs.setdefault("multi_step_loss", True)
        super().__init__(model, **kwargs)


class MetaSGD(MAML):
    """Meta-SGD (Li et al., 2017): a learned inner learning rate for every parameter."""

    def __init__(self, model: keras.Model, **kwargs: Any):
        kwargs.setdefault("learned_lr", "per_parameter")
        super().__init__(model, **kwargs)


class ANIL(MAML):
    """ANIL (Raghu et al., 2020): only the head adapts; the body is learned in the outer loop."""

    def __init__(self, model: keras.Model, **kwargs: Any):
        kwargs.setdefault("adapt", "head")
        super().__init__(model, **kwargs)


