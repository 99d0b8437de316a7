"""Reptile (Nichol, Achiam & Schulman, 2018) for any built Keras 3 model.

Per task: run a few optimiser steps on the support set from the current
parameters theta to get theta'_i; the meta-update moves theta towards the
adapted parameters, theta <- theta + eps * mean_i(theta'_i - theta).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import keras
import numpy as np
import tensorflow as tf

from tfmeta import functional as F
from tfmeta.maml import MetaLearner, MetaStep, _positive_float, _positive_int

INNER_OPTIMIZERS = ("sgd", "adam")


def minibatch_indices(num_examples: int, batch_size: int, steps: int, seed: int = 0) -> np.ndarray:
    """Static minibatch schedule over a support set, ``[steps, batch_size]``.

    Like the reference implementation, minibatches are drawn without
    replacement from a shuffled support set, reshuffling after every pass.
    The schedule is a constant computed at trace time: it needs no runtime
    randomness, keeps shapes static and compiles under XLA. It is the same for
    every task; episode labels are assigned to classes at random, so a fixed
    order of support positions is no bias.

    Args:
      num_examples: support-set size S.
      batch_size: examples per inner step (clipped to S).
      steps: number of inner steps.
      seed: seed of the shuffles.
    """
    batch_size = min(batch_size, num_examples)
    rng = np.random.default_rng(seed)
    needed = steps * batch_size
    order = np.concatenate(
        [rng.permutation(num_examples) for _ in range(-(-needed // num_examples))]
    )
    # A pass boundary can put one example twice into a batch; that only happens
    # when batch_size does not divide S, and matches sampling "with refill".
    return order[:needed].reshape(steps, batch_size).astype(np.int32)


class Reptile(MetaLearner):
    """Reptile with an SGD or Adam inner loop.

    Args:
      model: a built Keras 3 model (functional, Sequential or subclassed).
      inner_lr: inner learning rate (> 0).
      inner_steps: inner steps during meta-training (>= 1).
      outer_step_size: meta step size eps used by :meth:`meta_update`
        (1.0 replaces theta by the average adapted parameters).
      eval_inner_steps: inner steps in :meth:`evaluate`; defaults to
        ``inner_steps``.
      inner_optimizer: ``"sgd"`` or ``"adam"`` (state reset for every task;
        Kingma & Ba's bias-corrected update with epsilon 1e-8).
      inner_batch_size: support examples per inner step, drawn by
        :func:`minibatch_indices`; None uses the full support set.
      adam_beta1: Adam beta1 (0 as in the Reptile paper).
      adam_beta2: Adam beta2.
      loss: as for :class:`tfmeta.maml.MAML`.
      inner_grad_clip: optional global-norm clip of inner gradients.
      bn_mode: ``"transductive"``, ``"support"`` or ``"running"``; see
        :class:`tfmeta.maml.MetaLearner`.
      seed: seed of the minibatch schedule.
    """

    adam_epsilon = 1e-8

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
        self.outer_step_size = _positive_float("outer_step_size", outer_step_size)
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(
                f"unknown inner_optimizer {inner_optimizer!r}; allowed: {list(INNER_OPTIMIZERS)}"
            )
        self.inner_optimizer = inner_optimizer
        self.inner_batch_size = (
            None
            if inner_batch_size is None
            else _positive_int("inner_batch_size", inner_batch_size)
        )
        if not 0.0 <= adam_beta1 < 1.0:
            raise ValueError(f"adam_beta1 must be in [0, 1), got {adam_beta1!r}")
        if not 0.0 <= adam_beta2 < 1.0:
            raise ValueError(f"adam_beta2 must be in [0, 1), got {adam_beta2!r}")
        self.adam_beta1 = float(adam_beta1)
        self.adam_beta2 = float(adam_beta2)
        self.seed = int(seed)

    def _minibatches(self, support_x: tf.Tensor, steps: int) -> np.ndarray | None:
        if self.inner_batch_size is None:
            return None
        num = support_x.shape[0]
        if num is None:
            raise ValueError("inner_batch_size needs a static support-set size")
        return minibatch_indices(num, self.inner_batch_size, steps, self.seed)

    def inner_state(self, params):
        """Adam's first and second moments (zeros: the state is reset for every task)."""
        if self.inner_optimizer == "sgd":
            return []
        return [*F.zeros_like(params), *F.zeros_like(params)]  # m, then v

    def inner_step(self, fast, state, nt, x, y, t, *, training=True):
        """One SGD or Adam step on the support loss (see :meth:`MetaLearner.inner_step`)."""
        grads, nt = self._support_gradients(fast, nt, x, y, training)
        if self.inner_optimizer == "sgd":
            return F.sgd_step(fast, grads, self.inner_lr), state, nt
        n = len(fast)
        b1, b2 = self.adam_beta1, self.adam_beta2
        m = [b1 * mi + (1.0 - b1) * g for mi, g in zip(state[:n], grads)]
        v = [b2 * vi + (1.0 - b2) * tf.square(g) for vi, g in zip(state[n:], grads)]
        if isinstance(t, int):
            c1, c2 = 1.0 - b1 ** (t + 1), 1.0 - b2 ** (t + 1)
        else:  # a loop counter inside a tf.while_loop
            step = tf.cast(t + 1, tf.float32)
            c1, c2 = 1.0 - tf.pow(b1, step), 1.0 - tf.pow(b2, step)
        fast = [
            p - self.inner_lr * (mi / c1) / (tf.sqrt(vi / c2) + self.adam_epsilon)
            for p, mi, vi in zip(fast, m, v)
        ]
        return fast, m + v, nt

    def _adapt(self, params, nt, support_x, support_y, steps, training):
        # Reptile never differentiates through the inner loop.
        fast, state = F.stop_gradient(params), self.inner_state(params)
        schedule = self._minibatches(support_x, steps)
        for t in range(steps):  # unrolled: `steps` is a static Python int
            x, y = support_x, support_y
            if schedule is not None:
                x, y = tf.gather(support_x, schedule[t]), tf.gather(support_y, schedule[t])
            fast, state, nt = self.inner_step(fast, state, nt, x, y, t, training=training)
        return F.stop_gradient(fast), F.stop_gradient(nt)

    def _task_pseudo_gradient(self, theta, nt, task):
        fast, nt_after = self._adapt(
            theta, nt, task["support_x"], task["support_y"], self.inner_steps, True
        )
        metrics = self._task_metrics(theta, fast, nt, task)
        return F.sub(theta, fast), metrics, nt_after

    def meta_step(
        self, batch: Mapping[str, tf.Tensor], *, global_batch_size: int | None = None
    ) -> MetaStep:
        """Pseudo-gradients, metrics and non-trainable values for a batch of tasks.

        Args:
          batch: ``{"support_x": [B, S, ...], "support_y": [B, S, ...],
            "query_x": [B, Q, ...], "query_y": [B, Q, ...]}``; the query set
            is only used for the metrics.
          global_batch_size: total number of tasks across replicas; defaults
            to B.

        Returns:
          A :class:`tfmeta.maml.MetaStep` whose ``grads`` are
          ``sum_i (theta - theta'_i) / global_batch_size``: plain SGD with
          learning rate eps on them gives theta + eps * mean_i(theta'_i - theta).
          Metrics and floating non-trainable values follow the same
          sum / global_batch_size contract.
        """
        return self._meta_step_from(self._task_pseudo_gradient, batch, global_batch_size)

    def meta_gradients(
        self, batch: Mapping[str, tf.Tensor], *, global_batch_size: int | None = None
    ) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        """``(grads, metrics)`` of :meth:`meta_step` (Reptile pseudo-gradients)."""
        return super().meta_gradients(batch, global_batch_size=global_batch_size)

    def meta_update(self, batch: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Applies theta <- theta + eps * mean_i(theta'_i - theta) in place.

        Single-device convenience (under a strategy, use :meth:`meta_step` and
        let the trainer reduce and apply). Also assigns the task-averaged
        batch-norm moving statistics.

        Returns:
          The step's metrics (means over the batch).
        """
        step = self.meta_step(batch)
        for var, g in zip(self.model.trainable_variables, step.grads):
            var.assign_sub(tf.constant(self.outer_step_size, var.dtype) * g)
        F.assign_floating(self.model.non_trainable_variables, step.non_trainable)
        return step.metrics
