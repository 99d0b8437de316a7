"""Reptile (Nichol, Achiam & Schulman, 2018) for any built Keras 3 model.

Per task: run a few optimiser steps on the support set from the current
parameters theta to get theta'_i; the meta-update moves theta towards the
adapted parameters, theta <- theta + eps * mean_i(theta'_i - theta). The
inner loop is :mod:`tfmeta.core.inner_loop`'s, with SGD or Adam on support
minibatches drawn by :func:`tfmeta.core.inner_loop.minibatch_indices`.

Two options reproduce what the reference code (openai/supervised-reptile) does
besides the update rule, and both speed up learning per meta-iteration:
``shuffle_per_task`` gives each task its own minibatch shuffles, and
``carry_optimizer_state`` keeps Adam's moments and step count from task to task
(the reference saves and restores only the trainable variables between tasks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import keras
import tensorflow as tf

from tfmeta.core import functional as F
from tfmeta.core import schedule
from tfmeta.base.choices import INNER_OPTIMIZERS
from tfmeta.core.inner_loop import InnerOptions, loop_steps
from tfmeta.core.inner_loop import minibatch_indices  # noqa: F401  (part of this module's API)
from tfmeta.core.meta_learner import MetaLearner, MetaStep
from tfmeta.core.task_batch import positive_float, positive_int


class Reptile(MetaLearner):
    """Reptile with an SGD or Adam inner loop.

    Args:
      model: a built Keras 3 model (functional, Sequential or subclassed).
      inner_lr: inner learning rate (> 0).
      inner_steps: inner steps during meta-training (>= 1).
      outer_step_size: meta step size eps used by :meth:`meta_update`
        (1.0 replaces theta by the average adapted parameters).
      eval_inner_steps: inner steps in :meth:`evaluate`; defaults to ``inner_steps``.
      inner_optimizer: ``"sgd"`` or ``"adam"`` (state reset for every task;
        Kingma & Ba's bias-corrected update with epsilon 1e-8).
      inner_batch_size: support examples per inner step, drawn by
        :func:`tfmeta.core.inner_loop.minibatch_indices`; None uses the full support set.
      adam_beta1: Adam beta1 (0 as in the Reptile paper).
      adam_beta2: Adam beta2.
      loss: as for :class:`tfmeta.core.maml.MAML`.
      inner_grad_clip: optional global-norm clip of each task's inner gradients.
      bn_mode: ``"transductive"``, ``"support"`` or ``"running"``; see
        :class:`tfmeta.core.meta_learner.MetaLearner`.
      seed: seed of the minibatch schedule.
      shuffle_per_task: each task's minibatches come from its own shuffles, seeded by a hash of
        its support set (:func:`tfmeta.core.inner_loop.task_seeds`), so the schedule is the same in
        training, evaluation and the exported model; False: one schedule for every task.
      carry_optimizer_state: Adam only. Adam's moments and bias-correction powers persist from
        task to task in state variables (``state_variables``, checkpointed and exported):
        every task of a meta-iteration starts from the carried state, and the carried state
        becomes the mean of the tasks' final states (the order-free counterpart of the
        reference's sequential tasks; see :meth:`tfmeta.core.inner_loop.InnerLoop.adapt`).
        Evaluation starts every task from it. False: zeros for every task.
      tasks_in_parallel: ``1``, an int ``k``, ``"all"`` or ``"auto"``; see
        :mod:`tfmeta.core.meta_learner`.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        inner_lr: float,
        inner_steps: int,
        outer_step_size: float = 1.0,
        eval_inner_steps: int | None = None,
        inner_optimizer: str = "sgd",
        inner_batch_size: int | None = None,
        adam_beta1: float = 0.0,
        adam_beta2: float = 0.999,
        loss: str | Callable[[tf.Tensor, tf.Tensor], tf.Tensor] = "sparse_categorical_crossentropy",
        inner_grad_clip: float | None = None,
        bn_mode: str = "transductive",
        seed: int = 0,
        shuffle_per_task: bool = False,
        carry_optimizer_state: bool = False,
        tasks_in_parallel: int | str = "auto",
    ):
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(
                f"unknown inner_optimizer {inner_optimizer!r}; allowed: {list(INNER_OPTIMIZERS)}")
        if not 0.0 <= adam_beta1 < 1.0:
            raise ValueError(f"adam_beta1 must be in [0, 1), got {adam_beta1!r}")
        if not 0.0 <= adam_beta2 < 1.0:
            raise ValueError(f"adam_beta2 must be in [0, 1), got {adam_beta2!r}")
        if carry_optimizer_state and inner_optimizer != "adam":
            raise ValueError(f"carry_optimizer_state needs inner_optimizer='adam' (SGD has no "
                             f"state), got inner_optimizer={inner_optimizer!r}")
        options = InnerOptions(
            lr=inner_lr, optimizer=inner_optimizer, adam_beta1=float(adam_beta1),
            adam_beta2=float(adam_beta2), seed=int(seed), grad_clip=inner_grad_clip,
            shuffle_per_task=bool(shuffle_per_task),
            carry_optimizer_state=bool(carry_optimizer_state),
            batch_size=(None if inner_batch_size is None
                        else positive_int("inner_batch_size", inner_batch_size)))
        super().__init__(model, inner_steps=inner_steps, eval_inner_steps=eval_inner_steps,
                         loss=loss, bn_mode=bn_mode, options=options,
                         tasks_in_parallel=tasks_in_parallel)
        self.outer_step_size = positive_float("outer_step_size", outer_step_size)

    @property
    def inner_optimizer(self) -> str:
        return self.inner.options.optimizer

    @property
    def inner_batch_size(self) -> int | None:
        return self.inner.options.batch_size

    @property
    def adam_beta1(self) -> float:
        return self.inner.options.adam_beta1

    @property
    def adam_beta2(self) -> float:
        return self.inner.options.adam_beta2

    @property
    def seed(self) -> int:
        return self.inner.options.seed

    @property
    def shuffle_per_task(self) -> bool:
        return self.inner.options.shuffle_per_task

    @property
    def carry_optimizer_state(self) -> bool:
        return self.inner.options.carry_optimizer_state

    @property
    def optimizer_state_variables(self) -> list[tf.Variable]:
        """The carried inner optimiser state (empty unless ``carry_optimizer_state``)."""
        return list(self.inner.variables.optimizer_state)

    def _group_contribution(self, theta, state, task):
        # Reptile never differentiates through the inner loop.
        theta = F.stop_gradient(theta)
        steps = loop_steps(self.inner_steps)  # a while loop when long: the graph does not grow
        adapted = self.inner.adapt(theta, state, task["support_x"], task["support_y"], steps,
                                   first_order=True)
        fast = F.stop_gradient(adapted.fast)
        out = self.inner.predict(theta, state, fast, task["query_x"],
                                 support_x=task["support_x"], steps_taken=steps)
        metrics = self._metrics(theta, state, fast, task, out_post=out)
        # sum_i (theta - theta'_i); the inner loop of Reptile has no meta-parameters of its own.
        grads = [tf.reduce_sum(p[None] - f, axis=0) for p, f in zip(theta, fast)]
        return grads, metrics, F.stop_gradient([*adapted.batch_norm_stats, *adapted.inner_state])

    def meta_step(self, batch: Mapping[str, tf.Tensor], *,
                  global_batch_size: int | None = None) -> MetaStep:
        """Pseudo-gradients, metrics and non-trainable values for a batch of tasks.

        Args:
          batch: ``{"support_x": [B, S, ...], "support_y": [B, S, ...],
            "query_x": [B, Q, ...], "query_y": [B, Q, ...]}``; the query set
            is only used for the metrics.
          global_batch_size: total number of tasks across replicas; defaults
            to B.

        Returns:
          A :class:`tfmeta.core.meta_learner.MetaStep` whose ``grads`` are
          ``sum_i (theta - theta'_i) / global_batch_size``: plain SGD with
          learning rate eps on them gives theta + eps * mean_i(theta'_i - theta).
          Metrics and floating non-trainable values follow the same
          sum / global_batch_size contract.
        """
        return self._meta_step(batch, global_batch_size)

    def meta_update(self, batch: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Applies theta <- theta + eps * mean_i(theta'_i - theta) in place.

        Single-device convenience (under a strategy, use :meth:`meta_step` and
        let the trainer reduce and apply). Also assigns the task-averaged
        batch-norm moving statistics.

        Returns:
          The step's metrics (means over the batch).
        """
        step = self.meta_step(batch)
        schedule.apply_meta_step(step.grads, self.meta_variables, step_size=self.outer_step_size)
        schedule.assign_state(self.state_variables, step.non_trainable)
        return step.metrics
