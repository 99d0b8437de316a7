"""Meta-gradients through the inner loop with memory bounded in the number of inner steps.

Second-order MAML differentiates the query loss through every inner step. Recording the whole
unrolled loop on one ``tf.GradientTape`` keeps every step's activations (and its inner tape's)
alive until the outer backward pass: memory grows linearly with the inner steps. Here
(``remat="steps"``) the loop runs forward keeping only each step's *loop state* (fast weights,
optimiser state, batch-norm statistics: :class:`tfmeta.core.inner_loop.LoopState`), then runs
backward from the last step to the first, re-running each step under a fresh tape (its own
inner tape nested inside, so second derivatives are exact) to get that step's vector-Jacobian
product with the adjoint of its output. Memory is the stored states plus one step's activations;
time is about one extra forward and inner backward per step.

``tf.custom_gradient`` (and so ``tf.recompute_grad``) does not nest for second derivatives, and
an unrolled Python loop would let the graph optimiser merge each recomputation with the forward
pass (the same ops on the same inputs), keeping every activation alive again. The forward and the
backward passes are therefore two ``tf.while_loop`` s with the states in ``TensorArray`` s: the
graph does not grow with the step count, nothing can be merged across the loops, and the loops
compile under XLA (static trip counts, static shapes).

The objective is a sum of terms, one per adapted state: ``objective(k, loop_k)`` for
``k = 1..K`` (only ``k = K`` unless every step counts, as in MAML++'s multi-step loss). Its
gradient with respect to the meta-parameters equals the one of the unrolled tape up to round-off
(tests compare them in float64).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import tensorflow as tf

from tfmeta.core import functional as F
from tfmeta.core.inner_loop import Adapted, InnerLoop, LoopState, num_tasks

# objective(k, theta, loop_k) -> scalar summed over the tasks, for the state after k steps.
Objective = Callable[[Any, Sequence[tf.Tensor], LoopState], tf.Tensor]


class Result(NamedTuple):
    """What :func:`meta_gradients` returns.

    Attributes:
      grads: gradient of the summed objective, aligned with ``theta``.
      adapted: the adaptation's result, as :meth:`tfmeta.core.inner_loop.InnerLoop.adapt` returns it.
    """

    grads: list[tf.Tensor]
    adapted: Adapted


def _floating(values: Sequence[tf.Tensor]) -> list[int]:
    return [i for i, v in enumerate(values) if F.is_floating(v)]


def _add(a: Sequence[tf.Tensor], b: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    return [x + tf.cast(y, x.dtype) for x, y in zip(a, b)]


def _vjp(fn: Callable[[list[tf.Tensor], list[tf.Tensor]], list[tf.Tensor]],
         theta: Sequence[tf.Tensor], inputs: Sequence[tf.Tensor],
         adjoint: Sequence[tf.Tensor | None] | None) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
    """``(d<adjoint, fn>/d theta, d<adjoint, fn>/d inputs)``; inputs' entries only where floating.

    ``adjoint`` is aligned with ``fn``'s outputs (None entries: that output does not count); None
    differentiates the sum of ``fn``'s outputs (a scalar objective).
    """
    theta, inputs = list(theta), list(inputs)
    wanted = _floating(inputs)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        tape.watch([inputs[i] for i in wanted])
        outputs = fn(theta, inputs)
    if adjoint is None:
        targets, output_gradients = outputs, None
    else:
        pairs = [(o, a) for o, a in zip(outputs, adjoint) if a is not None]
        targets, output_gradients = [o for o, _ in pairs], [a for _, a in pairs]
    grads = tape.gradient(targets, [*theta, *(inputs[i] for i in wanted)],
                          output_gradients=output_gradients,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    # Dense, so that the loops can carry and add them (a gathered per-step slot gives slices).
    grads = [tf.convert_to_tensor(g) for g in grads]
    return grads[: len(theta)], grads[len(theta):]


def meta_gradients(inner: InnerLoop, theta: Sequence[tf.Tensor], state: Sequence[tf.Tensor],
                   x: tf.Tensor, y: tf.Tensor, steps: int, *, first_order: bool,
                   objective: Objective, every_step: bool, blocks: bool = False) -> Result:
    """Gradient of ``sum_k objective(k, theta, loop_k)`` through ``steps`` inner steps.

    Args:
      inner: the inner loop.
      theta: meta-parameter values aligned with ``inner.meta_variables`` (no task axis).
      state: state values aligned with ``inner.state_variables``.
      x, y: support sets ``[T, S, ...]``.
      steps: inner steps (a positive Python int: the loops' static trip count).
      first_order: treat the inner gradients as constants.
      objective: ``objective(k, theta, loop_k)``, the objective's term for the state after ``k``
        steps (``k`` the Python int ``steps`` for the last state, a scalar int32 tensor for the
        others), summed over the tasks.
      every_step: whether every state ``k = 1..steps`` has a term (the multi-step loss);
        otherwise only the last.
      blocks: also recompute inside each step, block by block of the model
        (:mod:`tfmeta.core.blocks`): only block-boundary activations of the step being
        differentiated are kept.

    Returns:
      A :class:`Result`: the gradient aligned with ``theta`` and the adapted parameters.
    """
    theta = list(theta)
    carried = inner.split_state(state).inner[inner.variables.num_step_stats:]
    seeds = inner._task_seeds(x, y)

    def initial(th: list[tf.Tensor]) -> LoopState:
        loop = inner.start(th, state, num_tasks(x))
        return loop._replace(optimizer_state=inner.init_optimizer_state(loop.fast, carried))

    structure = initial(theta)
    flat0 = tf.nest.flatten(structure)
    floating = _floating(flat0)

    def pack(flat: Sequence[tf.Tensor]) -> LoopState:
        return tf.nest.pack_sequence_as(structure, list(flat))

    def run_step(t: tf.Tensor, th: list[tf.Tensor], flat: list[tf.Tensor]) -> list[tf.Tensor]:
        xb, yb = inner._support_batch(x, y, t, seeds)
        new = inner.step(t, inner.split_theta(th).inner, pack(flat), xb, yb,
                         first_order=first_order, blockwise=blocks)
        return tf.nest.flatten(new)

    def term(k: Any, flat: list[tf.Tensor]) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        return _vjp(lambda th, inp: [objective(k, th, pack(inp))], theta, flat, None)

    def scatter(adjoint: Sequence[tf.Tensor]) -> list[tf.Tensor | None]:
        full: list[tf.Tensor | None] = [None] * len(flat0)
        for a, i in zip(adjoint, floating):
            full[i] = a
        return full

    # Forward: states 0..K-1 into TensorArrays (state k is the input of step k).
    arrays = [tf.TensorArray(v.dtype, size=steps, element_shape=v.shape,
                             clear_after_read=False) for v in flat0]

    def forward(t, flat, arrays):
        arrays = [a.write(t, v) for a, v in zip(arrays, flat)]
        return t + 1, run_step(t, theta, flat), arrays

    _, flat_last, arrays = tf.while_loop(
        lambda t, *_: t < steps, forward, (tf.constant(0), flat0, arrays),
        maximum_iterations=steps)

    # Backward: the adjoint of state t goes through step t - 1 to state t - 1.
    grads, adjoint = term(steps, flat_last)

    def backward(t, adjoint, grads):
        if every_step:
            def add_term():
                g, d = term(t, [a.read(t) for a in arrays])
                return [*_add(adjoint, d), *_add(grads, g)]

            merged = tf.cond(t < steps, add_term, lambda: [*adjoint, *grads])
            adjoint, grads = merged[: len(adjoint)], merged[len(adjoint):]
        g, d = _vjp(lambda th, inp: run_step(t - 1, th, inp), theta,
                    [a.read(t - 1) for a in arrays], scatter(adjoint))
        return t - 1, d, _add(grads, g)

    # One step at a time: re-running step t - 1 does not depend on the adjoint, so by default the
    # executor would re-run several steps ahead and hold all their activations at once.
    _, adjoint, grads = tf.while_loop(
        lambda t, *_: t > 0, backward, (tf.constant(steps), adjoint, grads),
        maximum_iterations=steps, parallel_iterations=1)
    g, _ = _vjp(lambda th, _: tf.nest.flatten(initial(th)), theta, [], scatter(adjoint))
    return Result(_add(grads, g), inner.result(pack(flat_last), carried=bool(carried)))
