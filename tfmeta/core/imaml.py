"""Implicit MAML (Rajeswaran et al., 2019): meta-gradients without differentiating the inner loop.

Each task adapts by gradient descent on its support loss plus a proximal term,
``L_s(phi) + lambda / 2 * ||phi - theta||^2`` (the same inner loop as every algorithm, with
``InnerOptions.proximal``). At the inner optimum ``phi*`` the Jacobian ``d phi* / d theta`` is
``(I + H / lambda)^-1``, ``H`` the Hessian of the support loss at ``phi*``, so the meta-gradient
of the query loss is ``v = (I + H / lambda)^-1 g`` with ``g = grad L_q(phi*)``. It is solved by
conjugate gradient, every task at once (task-batched Hessian-vector products, per-task step
sizes): no tape is held across inner steps, so memory does not grow with their number, and the
adaptation runs as a ``tf.while_loop``.

The implicit gradient is exact when the inner problem is solved exactly and CG converges; with
a few inner steps and CG iterations it is the approximation the paper trains with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras
import tensorflow as tf

from tfmeta.core import functional as F
from tfmeta.core.inner_loop import InnerOptions, loop_steps, num_tasks
from tfmeta.core.meta_learner import MetaLearner, MetaStep
from tfmeta.core.task_batch import positive_float, positive_int


def _task_dot(a: list[tf.Tensor], b: list[tf.Tensor]) -> tf.Tensor:
    """Per-task inner products of two parameter lists with a leading task axis: ``[T]``."""
    return tf.add_n([tf.reduce_sum(x * y, axis=list(range(1, len(x.shape)))) for x, y in zip(a, b)])


def _scaled(a: list[tf.Tensor], scale: tf.Tensor) -> list[tf.Tensor]:
    """Each task's tensors times its scalar (``scale`` is ``[T]``)."""
    return [x * tf.reshape(tf.cast(scale, x.dtype), [-1] + [1] * (len(x.shape) - 1)) for x in a]


def conjugate_gradient(matvec: Callable[[list[tf.Tensor]], list[tf.Tensor]],
                       b: list[tf.Tensor], iterations: int) -> list[tf.Tensor]:
    """Solves ``A x = b`` for every task at once (``A`` symmetric positive definite per task).

    Args:
      matvec: ``x -> A x`` on parameter lists with a leading task axis.
      b: the right-hand side, a parameter list with a leading task axis.
      iterations: CG iterations (a Python int: a static loop, as XLA and TPUs want).

    Returns:
      The approximate solution, starting from 0. A task whose residual vanishes stops moving
      (its step sizes are 0, never NaN).
    """
    x = F.zeros_like(b)
    r, p = list(b), list(b)
    rs = _task_dot(r, r)
    for _ in range(iterations):
        ap = matvec(p)
        alpha = tf.math.divide_no_nan(rs, _task_dot(p, ap))
        x = [xi + di for xi, di in zip(x, _scaled(p, alpha))]
        r = [ri - di for ri, di in zip(r, _scaled(ap, alpha))]
        rs_new = _task_dot(r, r)
        p = [ri + di for ri, di in zip(r, _scaled(p, tf.math.divide_no_nan(rs_new, rs)))]
        rs = rs_new
    return x


class IMAML(MetaLearner):
    """Implicit MAML: proximal inner objective, meta-gradient by conjugate gradient.

    Args:
      model: a built Keras 3 model.
      inner_lr: inner gradient-descent learning rate (> 0).
      inner_steps: inner steps during meta-training (>= 1).
      eval_inner_steps: inner steps in evaluation and serving; defaults to ``inner_steps``.
      lam: the proximal weight ``lambda`` (> 0): larger keeps ``phi`` nearer ``theta``.
      cg_steps: conjugate-gradient iterations of the meta-gradient (>= 1).
      loss: as for :class:`tfmeta.core.maml.MAML`.
      inner_grad_clip: as for :class:`tfmeta.core.maml.MAML` (the implicit gradient assumes an inner
        optimum, which clipping does not change).
      bn_mode: as for :class:`tfmeta.core.maml.MAML`.
      tasks_in_parallel: as for :class:`tfmeta.core.maml.MAML`.
    """

    def __init__(self, model: keras.Model, *, inner_lr: float, inner_steps: int,
                 eval_inner_steps: int | None = None, lam: float = 2.0, cg_steps: int = 5,
                 loss: str | Callable[[tf.Tensor, tf.Tensor], tf.Tensor] =
                 "sparse_categorical_crossentropy",
                 inner_grad_clip: float | None = None, bn_mode: str = "transductive",
                 tasks_in_parallel: int | str = "auto"):
        options = InnerOptions(lr=inner_lr, grad_clip=inner_grad_clip,
                               proximal=positive_float("lam", lam))
        super().__init__(model, inner_steps=inner_steps, eval_inner_steps=eval_inner_steps,
                         loss=loss, bn_mode=bn_mode, options=options,
                         tasks_in_parallel=tasks_in_parallel)
        self.lam = float(lam)
        self.cg_steps = positive_int("cg_steps", cg_steps)

    def _second_order(self, **unused: Any) -> bool:
        # Hessian-vector products: group sizes as for second-order meta-gradients.
        return True

    def _support_hvp(self, fast: list[tf.Tensor], nt: list[tf.Tensor], x: tf.Tensor,
                     y: tf.Tensor, vector: list[tf.Tensor]) -> list[tf.Tensor]:
        """``H v`` per task, ``H`` the Hessian of each task's support loss at ``fast``."""
        inner = self.inner
        with tf.GradientTape() as outer:
            outer.watch(fast)
            with tf.GradientTape() as tape:
                tape.watch(fast)
                out, _ = inner.forward(fast, nt, x, training=True)
                loss = tf.reduce_sum(inner.task_loss(y, out))
            grads = tape.gradient(loss, fast, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            dot = tf.reduce_sum(_task_dot(grads, vector))
        return outer.gradient(dot, fast, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def _group_contribution(self, theta, state, task, **unused):
        inner = self.inner
        sx, sy, qx, qy = (task[k] for k in ("support_x", "support_y", "query_x", "query_y"))
        # Nothing differentiates through the adaptation: a while loop beyond a few steps, so
        # neither the graph nor the memory grows with the inner steps.
        adapted = inner.adapt(theta, state, sx, sy, loop_steps(self.inner_steps),
                              first_order=True)
        fast = F.stop_gradient(adapted.fast)
        with tf.GradientTape() as tape:
            tape.watch(fast)
            out_q = inner.predict(theta, state, fast, qx, support_x=sx,
                                  steps_taken=self.inner_steps)
            qy = inner.check_labels(qy, out_q, "query")
            loss_post = inner.task_loss(qy, out_q)
            total = tf.reduce_sum(loss_post)
        g = tape.gradient(total, fast, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        nt = inner.start(theta, state, num_tasks(sx)).batch_norm_stats
        lam = tf.constant(self.lam, g[0].dtype)

        def matvec(v: list[tf.Tensor]) -> list[tf.Tensor]:
            hv = self._support_hvp(fast, nt, sx, sy, v)
            return [vi + hi / lam for vi, hi in zip(v, hv)]

        v = conjugate_gradient(matvec, g, self.cg_steps)
        # d phi_i / d theta is the same solve for every task; theta's gradient sums the tasks.
        grads = [tf.reduce_sum(vi, axis=0) for vi in v]
        grads += F.zeros_like(self.inner.split_theta(theta).inner)
        metrics = self._metrics(theta, state, fast, task, out_post=out_q, loss_post=loss_post)
        return grads, metrics, [*adapted.batch_norm_stats, *adapted.inner_state]

    def meta_step(self, batch: Mapping[str, tf.Tensor], *,
                  global_batch_size: int | None = None, **unused: Any) -> MetaStep:
        """Implicit meta-gradients, metrics and non-trainable values for a batch of tasks.

        Args:
          batch: ``{"support_x": [B, S, ...], "support_y", "query_x": [B, Q, ...], "query_y"}``.
          global_batch_size: total number of tasks across replicas; defaults to B.

        Returns:
          A :class:`tfmeta.core.meta_learner.MetaStep`, summed over the local tasks and divided by
          ``global_batch_size`` as for every algorithm.
        """
        return self._meta_step(batch, global_batch_size)
