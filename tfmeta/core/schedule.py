"""The phase schedule of meta-training, and the one way a meta-step is applied.

Two MAML options change how a meta-iteration is computed at fixed iterations: derivative-order
annealing (first-order meta-gradients before an iteration, second order after it) and MAML++'s
multi-step loss (the query loss after every inner step, weighted, until it is switched off). The
trainer (``tfmeta.run.trainer``) compiles one loop per phase; ``tfmeta.keras.MetaModel`` puts every
phase in the graph and picks one per step. Both take the phases from :class:`PhaseSchedule`, so
they switch at the same iterations with the same ``meta_step`` arguments.

:func:`apply_meta_step` is the other half they share: meta-gradients to the outer optimizer (or
Reptile's in-place step ``theta <- theta - eps * g``) and the task-mean state values to the
algorithm's state variables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tfmeta.core import functional as F
from tfmeta.core import maml


@dataclasses.dataclass(frozen=True)
class Phase:
    """How the meta-iterations of one phase call ``meta_step``.

    Attributes:
      first_order: the ``first_order`` argument; None for an algorithm that has no such switch.
      multi_step_loss: the ``multi_step_loss`` argument; None for an algorithm without it.
    """

    first_order: bool | None = None
    multi_step_loss: bool | None = None

    def kwargs(self, iteration: Any = None) -> dict[str, Any]:
        """``meta_step`` keyword arguments; ``iteration`` goes with the multi-step loss switch
        (its weights anneal by epoch), and is left out when it is None."""
        out: dict[str, Any] = {}
        if self.first_order is not None:
            out["first_order"] = self.first_order
        if self.multi_step_loss is not None:
            out["multi_step_loss"] = self.multi_step_loss
            if iteration is not None:
                out["iteration"] = iteration
        return out

    def describe(self) -> str:
        """``"first_order=False, multi_step_loss=True"``: the phase's arguments, sorted."""
        return ", ".join(f"{k}={v}" for k, v in sorted(self.kwargs().items()))


@dataclasses.dataclass(frozen=True)
class PhaseSchedule:
    """When the meta-step changes: a small value built from plain numbers.

    Attributes:
      maml: whether the algorithm is a MAML (it takes ``first_order``); False: one phase with no
        arguments (Reptile, iMAML).
      first_order_until: meta-iterations before this one are first order; None: every one is
        (first-order MAML).
      multi_step_loss_until: meta-iterations before this one use the multi-step loss (0: none);
        None: the algorithm has no multi-step loss switch and is not given one.
    """

    maml: bool = False
    first_order_until: int | None = 0
    multi_step_loss_until: int | None = None

    def __post_init__(self) -> None:
        for name in ("first_order_until", "multi_step_loss_until"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise ValueError(f"{name} must be an integer >= 0 or None, got {value!r}")

    @classmethod
    def for_algorithm(cls, algorithm: Any, *, first_order_iterations: int = 0) -> "PhaseSchedule":
        """The schedule of a built algorithm object (what ``MetaModel`` has, without a config).

        Args:
          algorithm: a meta-learner; a MAML (``first_order``, ``multi_step_loss``, ``msl_epochs``
            and ``iterations_per_epoch`` attributes) has phases, any other algorithm one.
          first_order_iterations: meta-iterations trained first order before second order.
        """
        if not isinstance(algorithm, maml.MAML):
            return cls()
        msl_until = None
        if algorithm.multi_step_loss:
            msl_until = algorithm.msl_epochs * algorithm.iterations_per_epoch
        elif isinstance(algorithm, maml.MAMLpp):
            msl_until = 0
        return cls(maml=True,
                   first_order_until=None if algorithm.first_order else first_order_iterations,
                   multi_step_loss_until=msl_until)

    def boundaries(self) -> tuple[int, ...]:
        """The iterations (> 0) at which the phase changes, ascending."""
        if not self.maml:
            return ()
        found = {b for b in (self.first_order_until, self.multi_step_loss_until)
                 if b is not None and b > 0}
        return tuple(sorted(found))

    def phase(self, iteration: int) -> Phase:
        """The phase that holds meta-iteration ``iteration``."""
        if not self.maml:
            return Phase()
        first_order = self.first_order_until is None or iteration < self.first_order_until
        msl = (None if self.multi_step_loss_until is None
               else iteration < self.multi_step_loss_until)
        return Phase(first_order=first_order, multi_step_loss=msl)

    def next_switch(self, iteration: int, end: int) -> int:
        """The first iteration after ``iteration`` in another phase, or ``end`` if none is
        before it."""
        return min([b for b in self.boundaries() if b > iteration] + [end])

    def phase_starts(self) -> tuple[int, ...]:
        """The first iteration of every phase: 0 and the boundaries."""
        return (0, *self.boundaries())


def apply_meta_step(grads: Sequence[tf.Tensor], variables: Sequence[tf.Variable], *,
                    optimizer: keras.optimizers.Optimizer | None = None,
                    step_size: float | None = None) -> None:
    """Applies meta-gradients to the meta-parameters.

    With an ``optimizer``: its update (Keras sums the gradients across replicas under a strategy,
    so per-replica gradients divided by the global task count are averaged exactly once). Without
    one: the plain step ``v <- v - step_size * g``, which for Reptile's pseudo-gradients
    ``mean_i(theta - theta'_i)`` is ``theta + eps * mean_i(theta'_i - theta)`` (single device).

    Raises:
      ValueError: neither or both of ``optimizer`` and ``step_size`` are given.
    """
    if (optimizer is None) == (step_size is None):
        raise ValueError("apply_meta_step takes an optimizer or a step_size, exactly one")
    if optimizer is not None:
        optimizer.apply_gradients(zip(grads, variables))
        return
    for var, g in zip(variables, grads):
        var.assign_sub(tf.constant(step_size, var.dtype) * g)


def assign_state(variables: Sequence[tf.Variable], values: Sequence[tf.Tensor], *,
                 strategy: tf.distribute.Strategy | None = None) -> None:
    """Assigns the task-mean state values (batch-norm statistics, carried optimizer state).

    Integer state (counters) is left alone. Each value is its tasks' sum divided by the global
    task count; under ``strategy`` (cross-replica context) the per-replica values are summed,
    which gives the mean over all tasks.
    """
    if strategy is not None:
        values = [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                  if F.is_floating(var) else value for var, value in zip(variables, values)]
    F.assign_floating(variables, values)
