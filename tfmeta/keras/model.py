"""MetaModel: a tfmeta algorithm as a ``keras.Model`` (see :mod:`tfmeta.keras`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfmeta.core.maml import MAML
from tfmeta.core.meta_learner import MetaLearner
from tfmeta.core.reptile import Reptile
from tfmeta.core.schedule import PhaseSchedule, apply_meta_step, assign_state
from tfmeta.keras.backups import (
    _AtomicBackupAndRestore,
    _discard,
    _is_local,
    _Resume,
    write_file_atomically,
)
from tfmeta.keras.episodes import (
    _LABEL_CHECK,
    EPISODE_KEYS,
    _empty_message,
    _episode_part,
    _label_error,
    _NoData,
    check_episode_inputs,
    check_episode_structure,
)
from tfmeta.keras.errors import (
    AlgorithmTypeError,
    EpisodeError,
    MetaModelError,
    WeightsFileError,
    _describe,
    _first_line,
)
from tfmeta.keras.export import export

# Algorithm metric -> name in Keras logs ("accuracy" reads as the accuracy that matters: after
# adaptation).
METRIC_NAMES = {"loss": "loss", "accuracy_post": "accuracy", "loss_pre": "loss_pre",
                "accuracy_pre": "accuracy_pre"}


def _all_layers(model: keras.Model) -> Iterator[keras.Layer]:
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _check_precision(model: keras.Model) -> None:
    """Refuses a network built under a mixed-precision dtype policy (e.g. ``mixed_float16``).

    Its layers compute in float16 on float32 variables; meta-gradients through the inner loop
    then mix the two dtypes (TensorFlow fails on them), and there is no loss scaling for the
    inner loop's gradients.

    Raises:
      MetaModelError: naming the policy, the layer and the repair.
    """
    for layer in _all_layers(model):
        policy = getattr(layer, "dtype_policy", None)
        if (layer.weights and policy is not None
                and policy.compute_dtype != policy.variable_dtype):
            raise MetaModelError(
                f"the network {model.name!r} was built under the dtype policy "
                f"{policy.name!r} (layer {layer.name!r} computes in {policy.compute_dtype} on "
                f"{policy.variable_dtype} variables); meta-learning needs one precision: call "
                "keras.mixed_precision.set_global_policy('float32') before building the network")


class MetaModel(keras.Model):
    """A tfmeta meta-learner as a ``keras.Model``: ``fit`` meta-trains it (see the module doc).

    Build the network, the algorithm and the ``MetaModel`` together, inside
    ``strategy.scope()`` when training under a distribution strategy.

    Args:
      algorithm: a tfmeta meta-learner around a built Keras model: :class:`tfmeta.MAML`
        (also first order), :class:`tfmeta.MAMLpp`, :class:`tfmeta.MetaSGD`,
        :class:`tfmeta.ANIL` or :class:`tfmeta.Reptile`.
      first_order_iterations: MAML family: meta-iterations trained with first-order gradients
        before switching to second order (MAML++'s derivative-order annealing; the trainer's
        ``mamlpp.first_order_iterations``). The switch happens at exactly that meta-iteration,
        inside compiled multi-step executions too. MAML++'s multi-step loss is used for the
        algorithm's ``msl_epochs * iterations_per_epoch`` meta-iterations, as in the trainer.
      name: the Keras model name.

    Raises:
      AlgorithmTypeError: ``algorithm`` is not a tfmeta meta-learner.
      MetaModelError: ``first_order_iterations`` is negative or given for an algorithm that has
        no second order; the algorithm's variables were created under another distribution
        strategy than the ``MetaModel``.
    """

    # save_weights replaces its file atomically (the backups of fit rely on it).
    writes_weights_atomically = True

    def __init__(self, algorithm: MetaLearner, *, first_order_iterations: int = 0,
                 name: str | None = None):
        if not isinstance(algorithm, MetaLearner):
            what = (f"the Keras model {algorithm.name!r}; wrap it in an algorithm first, e.g. "
                    "MetaModel(tfmeta.MAML(model, inner_lr=0.4, inner_steps=1))"
                    if isinstance(algorithm, keras.Model) else
                    f"{type(algorithm).__name__} {_describe(algorithm)}")
            raise AlgorithmTypeError(
                f"MetaModel wraps a tfmeta algorithm (tfmeta.MAML, MAMLpp, MetaSGD, ANIL, "
                f"Reptile); got {what}")
        if (isinstance(first_order_iterations, bool)
                or not isinstance(first_order_iterations, (int, np.integer))
                or first_order_iterations < 0):
            raise MetaModelError(f"first_order_iterations must be an integer >= 0, got "
                                 f"{first_order_iterations!r}")
        if first_order_iterations and not (isinstance(algorithm, MAML)
                                           and not algorithm.first_order):
            raise MetaModelError(
                f"first_order_iterations={first_order_iterations} anneals second-order MAML; "
                f"{type(algorithm).__name__} here has no second order")
        _check_precision(algorithm.model)
        super().__init__(name=name or f"meta_{algorithm.model.name}")
        self._check_strategy(algorithm)
        self.algorithm = algorithm
        # A tracked sub-layer: the network's weights are saved (and summarised) under it.
        self.network = algorithm.model
        self.first_order_iterations = int(first_order_iterations)
        self._iteration = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False,
            name="meta_iteration", aggregation="only_first_replica")
        names = [METRIC_NAMES[k] for k in algorithm.metric_names]
        self._trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self._resume: _Resume | None = None
        self._load_error: MetaModelError | None = None
        self.built = True

    @staticmethod
    def _check_strategy(algorithm: MetaLearner) -> None:
        strategy = tf.distribute.get_strategy()
        for var in [*algorithm.meta_variables, *algorithm.state_variables]:
            value = var.value if isinstance(var, keras.Variable) else var
            distributed = isinstance(value, tf.distribute.DistributedValues)
            if (tf.distribute.has_strategy() and not distributed) or (
                    distributed and not strategy.extended.variable_created_in_scope(value)):
                raise MetaModelError(
                    f"variable {var.name!r} of the algorithm was created under another "
                    "distribution strategy than the MetaModel; build the network, the algorithm "
                    "and the MetaModel together inside the same strategy.scope()")

    # ------------------------------------------------------------------ weights and state
    @property
    def meta_iteration(self) -> int:
        """Meta-iterations trained so far (saved with the weights)."""
        return int(self._iteration.numpy())

    # Keras derives its variable lists from the layers it tracks, which would miss the inner
    # loop's variables (learned rates, per-step batch norm, carried optimizer state): they are
    # the algorithm's, listed by its public API. Every Keras list is defined from that.
    @property
    def trainable_weights(self) -> list[Any]:
        """Exactly ``algorithm.meta_variables``: the network's, then the inner loop's."""
        return list(self.algorithm.meta_variables) if self.trainable else []

    @property
    def non_trainable_weights(self) -> list[Any]:
        """``algorithm.state_variables``, then the meta-iteration counter."""
        frozen = [] if self.trainable else list(self.algorithm.meta_variables)
        return [*frozen, *self.algorithm.state_variables, self._iteration]

    @property
    def weights(self) -> list[Any]:
        return [*self.trainable_weights, *self.non_trainable_weights]

    @property
    def trainable_variables(self) -> list[Any]:
        return self.trainable_weights

    @property
    def non_trainable_variables(self) -> list[Any]:
        return self.non_trainable_weights

    @property
    def variables(self) -> list[Any]:
        return self.weights

    def _own_saved_variables(self) -> list[Any]:
        """The counter and the algorithm's variables that are not the network's."""
        network = {id(v) for v in self.network.variables}
        inner = [v for v in [*self.algorithm.meta_variables, *self.algorithm.state_variables]
                 if id(v) not in network]
        return [self._iteration, *inner]

    def save_own_variables(self, store: Any) -> None:
        """Saves the counter and the inner loop's variables (the network saves its own)."""
        for i, var in enumerate(self._own_saved_variables()):
            store[str(i)] = np.asarray(var.numpy())

    def load_own_variables(self, store: Any) -> None:
        """Restores what :meth:`save_own_variables` saved.

        Raises:
          MetaModelError: the file holds another number of such variables (another algorithm
            or other options).
        """
        variables = self._own_saved_variables()
        if len(store.keys()) != len(variables):
            # Keras gathers loading errors into one message of many lines; load_weights raises
            # this one instead.
            self._load_error = MetaModelError(
                f"the weights file holds {len(store.keys())} meta-iteration/inner-loop variables "
                f"for {self.name!r}, which has {len(variables)}; it was saved from a MetaModel "
                "with another algorithm or other inner-loop options")
            raise self._load_error
        for i, var in enumerate(variables):
            var.assign(np.asarray(store[str(i)]))

    def save_weights(self, filepath: str, overwrite: bool = True,
                     max_shard_size: float | None = None) -> None:
        """``keras.Model.save_weights``, written atomically (so ModelCheckpoint, BackupAndRestore).

        A local ``.weights.h5`` file is written to a temporary sibling, flushed to disk and renamed
        over ``filepath`` (:func:`write_file_atomically`): a process killed while saving leaves the
        previous file whole. Sharded saves (``max_shard_size``) and remote paths are Keras' own.

        Raises:
          MetaModelError: ``filepath`` does not end in ``.weights.h5``, or exists and
            ``overwrite`` is False.
          WeightsFileError: its directory does not exist, or it cannot be written (the previous
            file is left whole).
        """
        path = os.fspath(filepath)
        if max_shard_size is not None or not _is_local(path):
            super().save_weights(path, overwrite=overwrite, max_shard_size=max_shard_size)
            return
        if not path.endswith(".weights.h5"):
            raise MetaModelError(f"save_weights: {path!r} must end in .weights.h5 (Keras' "
                                 "weights format), e.g. model.weights.h5")
        if not overwrite and os.path.exists(path):
            raise MetaModelError(f"save_weights: {path!r} exists; pass overwrite=True to "
                                 "replace it")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise WeightsFileError(f"save_weights: the directory {directory!r} of {path!r} does "
                                   "not exist; create it first")
        try:
            write_file_atomically(path, lambda tmp: keras.Model.save_weights(self, tmp,
                                                                        overwrite=True))
        except OSError as e:  # unwritable, or the disk is full: the previous file is whole
            raise WeightsFileError(f"save_weights: cannot write {path!r} ({_first_line(e)}); "
                                   "any previous file there is unchanged") from None

    def load_weights(self, filepath: str, *args: Any, **kwargs: Any) -> None:
        """``keras.Model.load_weights``, all or nothing, with one-line errors.

        A file that cannot be loaded whole leaves every weight (and the optimizer) as it was.

        Raises:
          WeightsFileError: the file does not exist, or is damaged (not a complete HDF5 file,
            e.g. written by a process that was killed; or unreadable).
          MetaModelError: not a ``.weights.h5`` file; or saved from a MetaModel with another
            algorithm or other inner-loop options, or from another network.
        """
        path = os.fspath(filepath)
        if _is_local(path) and not os.path.exists(path):
            raise WeightsFileError(f"load_weights: the weights file {path!r} does not exist")
        if not path.endswith((".weights.h5", ".weights.json")):
            raise MetaModelError(f"load_weights: {path!r} is not a .weights.h5 file; a MetaModel "
                                 "loads what its save_weights wrote (ModelCheckpoint with "
                                 "save_weights_only=True, BackupAndRestore)")
        self._load_error = None
        # Keras loads layer by layer: a failure halfway would leave some weights loaded.
        variables = [*self.weights, *(self.optimizer.variables if self.optimizer else [])]
        saved = [np.array(v.numpy()) for v in variables]
        try:
            super().load_weights(path, *args, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            for var, value in zip(variables, saved):
                var.assign(value)
            if self._load_error is not None:
                raise self._load_error from None
            reason = _first_line(e)
            if isinstance(e, OSError):
                error = WeightsFileError(
                    f"load_weights: the weights file {path!r} is damaged ({reason}); it was "
                    "not written completely (or the disk is damaged): use a complete copy, or "
                    "delete it to start without it")
                error.reason = reason
                raise error from None
            detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
            raise MetaModelError(
                f"load_weights: cannot load {path!r} into {self.name!r}: {detail[:300]}; it "
                "was saved from another network or is damaged") from None

    def get_config(self) -> dict[str, Any]:
        raise MetaModelError(
            "a MetaModel cannot be saved in the .keras format, which rebuilds models from a JSON "
            "config: a tfmeta algorithm has none; use save_weights()/load_weights() into a "
            "MetaModel built the same way, or export() for serving")

    def to_json(self, **kwargs: Any) -> str:
        """The JSON config of the meta-learned network (what TensorBoard's graph view shows).

        A MetaModel itself has no config (see :meth:`get_config`); the network does.
        """
        return self.network.to_json(**kwargs)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        # Listed so that Keras resets them every epoch and reads them for the epoch logs.
        return list(self._trackers.values())

    # ------------------------------------------------------------------------- compile
    def compile(self, optimizer: Any = None, loss: Any = None, metrics: Any = None, *,
                steps_per_execution: int = 1, jit_compile: bool | str = "auto",
                run_eagerly: bool = False, **kwargs: Any) -> None:
        """Configures meta-training.

        Args:
          optimizer: the outer (meta) optimizer, a Keras optimizer or its name. Default: what
            the trainer uses, ``Adam(1e-3)`` for the MAML family and ``SGD`` with the meta step
            size ``algorithm.outer_step_size`` as learning rate for Reptile (its meta-gradient
            is ``theta - theta'``).
          loss: not accepted: the meta-objective is the algorithm's ``loss``.
          metrics: not accepted: the logged metrics are fixed (module docstring).
          steps_per_execution: meta-iterations per compiled call (one host round trip each).
          jit_compile: compile each step with XLA (``"auto"``: Keras' rule, off on CPU-only
            machines and under distribution strategies).
          run_eagerly: run the steps eagerly (debugging).
          **kwargs: other ``keras.Model.compile`` arguments.

        Raises:
          MetaModelError: a ``loss`` or ``metrics`` was given.
        """
        for arg, value in (("loss", loss), ("metrics", metrics),
                           ("weighted_metrics", kwargs.get("weighted_metrics"))):
            if value is not None:
                raise MetaModelError(
                    f"MetaModel.compile got {arg}={_describe(value)}; the meta-objective is the "
                    "algorithm's loss (pass loss= to the algorithm) and the logged metrics are "
                    "loss, loss_pre, accuracy and accuracy_pre")
        if optimizer is None:
            optimizer = (keras.optimizers.SGD(self.algorithm.outer_step_size)
                         if isinstance(self.algorithm, Reptile) else keras.optimizers.Adam(1e-3))
        kwargs.pop("weighted_metrics", None)
        super().compile(optimizer=optimizer, steps_per_execution=steps_per_execution,
                        jit_compile=jit_compile, run_eagerly=run_eagerly, **kwargs)
        # The optimizer's slots must exist for every meta-variable (learned rates included) and
        # be created under the model's strategy, before any step function is traced.
        if not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        """Builds what is not built yet: only ever the optimizer (the model is built).

        Keras' version builds models from a sample batch, which it first reduces across
        replicas; for dict batches under ``MultiWorkerMirroredStrategy`` that reduction fails
        (Keras 3.15), and a MetaModel needs no sample batch.
        """
        del iterator, data_batch
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    # ---------------------------------------------------------------------------- phases
    @property
    def schedule(self) -> PhaseSchedule:
        """When the meta-step changes (derivative order, multi-step loss): the trainer's
        :class:`tfmeta.core.schedule.PhaseSchedule`, from the algorithm and
        ``first_order_iterations``."""
        return PhaseSchedule.for_algorithm(self.algorithm,
                                           first_order_iterations=self.first_order_iterations)

    def _meta_step(self, batch: dict[str, tf.Tensor], global_batch_size: int) -> Any:
        """The algorithm's meta-step on ``batch``, in the phase of the current meta-iteration.

        With several phases, all are in the graph and ``tf.switch_case`` picks one per step, so
        a phase switch happens at its exact meta-iteration even inside a multi-step execution
        (no retracing, XLA-compatible).
        """
        iteration = self._iteration.value
        schedule = self.schedule
        bounds = schedule.boundaries()

        def branch(start: int) -> Callable[[], tuple]:
            kwargs = schedule.phase(start).kwargs(iteration)
            return lambda: tuple(self.algorithm.meta_step(
                batch, global_batch_size=global_batch_size, **kwargs))

        if not bounds:
            return branch(0)()
        index = tf.add_n([tf.cast(iteration >= b, tf.int32) for b in bounds])
        return tf.switch_case(index, [branch(s) for s in schedule.phase_starts()])

    # ------------------------------------------------------------------------ the steps
    def _episodes(self, data: Any, *, need_query_y: bool = True) -> dict[str, tf.Tensor]:
        """The episode dict of a step's input, checked; labels checked in the graph too."""
        x = _episode_part(data, "episodes")
        check_episode_structure(x, where="episodes", classification=self._classification,
                                need_query_y=need_query_y)
        check_episode_inputs(x, where="episodes", input_shape=self.network.input_shape)
        keys = EPISODE_KEYS if need_query_y else EPISODE_KEYS[:3]
        batch = {k: tf.convert_to_tensor(x[k]) for k in keys}
        ways = self._classes
        if ways is not None:
            for key in keys[1::2]:
                y = batch[key]
                ok = tf.logical_and(tf.reduce_all(y >= 0), tf.reduce_all(y < ways))
                # The minimum and maximum go into the message, so the error names the values.
                check = tf.debugging.Assert(
                    ok, [f"{_LABEL_CHECK}: {key} must be in [0, {ways}); found",
                         tf.reduce_min(y), tf.reduce_max(y)], summarize=1)
                with tf.control_dependencies([check]):
                    batch[key] = tf.identity(y)
        return batch

    @property
    def _classification(self) -> bool:
        """Whether labels are integer class indices (the sparse cross-entropy loss)."""
        return self.algorithm.loss_name == "sparse_categorical_crossentropy"

    @property
    def _classes(self) -> int | None:
        """Label values run over ``[0, classes)``; None for real-valued targets."""
        if self._classification:
            return int(self.network.output_shape[-1])
        if self.algorithm.loss_name == "binary_crossentropy":
            return 2
        return None

    def _update_trackers(self, values: dict[str, tf.Tensor], count: tf.Tensor) -> None:
        """Adds a batch's global per-task means, weighted by its global number of tasks.

        ``values`` and ``count`` are the same on every replica (all-reduced), so each replica's
        tracker holds the global running mean and the cross-replica read (a sum of totals over
        a sum of counts) is that same mean.
        """
        for key, name in METRIC_NAMES.items():
            if key in values:
                self._trackers[name].update_state(values[key], sample_weight=count)

    def _results(self) -> dict[str, tf.Tensor]:
        results = {name: tracker.result() for name, tracker in self._trackers.items()}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3.15 reduces a multi-worker step's logs with reduce(MEAN, axis=0), which
            # fails on scalars; [1] reduces to the scalar (the values are equal everywhere).
            results = {name: value[None] for name, value in results.items()}
        return results

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        """One meta-iteration on a batch of episodes (this replica's share under a strategy).

        Every update (parameters, optimizer, state, counters) depends on the batch: when the
        data runs out, the step's ops that would not read it (the counters' increments) would
        otherwise still run, and an epoch that ended on an exhausted dataset would count a step.
        """
        batch = self._episodes(data)
        with tf.control_dependencies([batch["support_x"]]):
            return self._train_step(batch)

    def _train_step(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        strategy = tf.distribute.get_strategy()
        ctx = tf.distribute.get_replica_context()
        local = batch["support_x"].shape[0]
        if local is not None:
            # Static task counts (tf.data with drop_remainder, TPUs): the algorithm divides by
            # the global count itself, exactly as in the trainer.
            count = tf.constant(float(local * strategy.num_replicas_in_sync))
            step = self._meta_step(batch, local * strategy.num_replicas_in_sync)
            grads, metrics, state = step
        else:
            # Counts known only at run time (a last, smaller batch): sums, then one division by
            # the global count.
            count = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                   tf.cast(tf.shape(batch["support_x"])[0], tf.float32))
            grads, metrics, state = self._meta_step(batch, 1)
            grads = [g / tf.cast(count, g.dtype) for g in grads]
            metrics = {k: v / count for k, v in metrics.items()}
            state = [v / tf.cast(count, v.dtype) if v.dtype.is_floating else v for v in state]
        apply_meta_step(grads, self.algorithm.meta_variables, optimizer=self.optimizer)
        state_vars = self.algorithm.state_variables
        floating = [(var, value) for var, value in zip(state_vars, state)
                    if tf.as_dtype(var.dtype).is_floating]

        def update(strategy: tf.distribute.Strategy, values: list[Any], after: Any) -> None:
            # Each replica's values are its tasks' sum divided by the global count: their sum
            # is the mean over all tasks (as the trainer assigns them).
            assign_state([var for var, _ in floating], values, strategy=strategy)
            with tf.control_dependencies(strategy.experimental_local_results(after)):
                self._iteration.assign_add(1)

        ctx.merge_call(update, args=([value for _, value in floating], grads[0]))
        metrics = ctx.all_reduce(tf.distribute.ReduceOp.SUM, metrics)
        self._update_trackers(metrics, count)
        return self._results()

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        """Adapts to each episode (evaluation inner steps and batch-norm mode) and scores it."""
        batch = self._episodes(data)
        per_task = self.algorithm.evaluate(batch)
        ctx = tf.distribute.get_replica_context()
        sums = {k: tf.reduce_sum(v) for k, v in per_task.items()}
        sums["_count"] = tf.cast(tf.shape(batch["support_x"])[0], tf.float32)
        sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, sums)
        count = sums.pop("_count")
        self._update_trackers({k: v / count for k, v in sums.items()}, count)
        return self._results()

    def predict_step(self, data: Any) -> tf.Tensor:
        """Each episode's query outputs after adapting to its support set: ``[tasks, Q, ...]``."""
        return self._adapt_and_predict(self._episodes(data, need_query_y=False))

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """``meta_model(episodes)``, with the episodes checked first.

        Keras rewrites errors raised inside ``call`` into a message of several lines; checking
        here keeps a bad batch one line.
        """
        if isinstance(inputs, Mapping):
            self._check_data(inputs, "call", need_query_y=False)
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs: Mapping[str, Any], training: bool = False) -> tf.Tensor:
        """``meta_model(episodes)``: the adapted query outputs, as :meth:`predict_step`."""
        del training  # the inner loop always adapts in training mode, queries as bn_mode says
        return self._adapt_and_predict(self._episodes(inputs, need_query_y=False))

    def _adapt_and_predict(self, batch: dict[str, tf.Tensor]) -> tf.Tensor:
        return self.algorithm.adapt_and_predict(batch["support_x"], batch["support_y"],
                                                batch["query_x"])

    # ------------------------------------------------------------- fit / evaluate / predict
    def make_train_function(self, force: bool = False) -> Callable | None:
        """Keras' compiled train function, wrapped so that a restored fit resumes exactly.

        See :class:`_Resume`: the wrapper drops the batches and skips the steps that the
        restored weights have already been trained on.
        """
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force=True)
        compiled = self.train_function
        discard = tf.function(_discard)

        def train_function(iterator: Any) -> Any:
            resume = self._resume
            if resume is not None and resume.discard:
                discard(iterator, tf.constant(resume.discard, tf.int64))
                resume.discard = 0
            if resume is not None and resume.skip:
                resume.skip -= self.steps_per_execution
                return self.get_metrics_result()
            return compiled(iterator)

        self.train_function = train_function
        return train_function

    def _check_data(self, data: Any, where: str, *, need_query_y: bool = True) -> None:
        """Checks the structure of a dataset (its element spec) or of arrays before running."""
        if data is None:
            raise EpisodeError(f"{where}: no data given; pass a tf.data.Dataset of episode "
                               f"batches (dicts of {', '.join(EPISODE_KEYS)})")
        spec = data.element_spec if isinstance(data, tf.data.Dataset) else data
        if isinstance(data, tf.data.Dataset) or isinstance(data, (Mapping, tuple, list)):
            check_episode_structure(spec, where=where, classification=self._classification,
                                    need_query_y=need_query_y)
            check_episode_inputs(spec, where=where, input_shape=self.network.input_shape)
        if isinstance(data, tf.data.Dataset) and int(data.cardinality()) == 0:
            raise EpisodeError(_empty_message(where))

    def _check_steps(self, where: str, **steps: int | None) -> None:
        """Refuses step counts that Keras would round up to whole executions.

        With ``steps_per_execution=k`` every compiled call runs k steps while data lasts, so an
        epoch of an infinite stream with a step count that is not a multiple of k would train
        (or evaluate) more steps than asked.
        """
        k = self.steps_per_execution
        for name, value in steps.items():
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, np.integer)) or value < 1):
                # Keras takes 0 for "until the data runs out": forever on an infinite stream.
                raise MetaModelError(f"{where}: {name}={value!r}; it must be a positive integer "
                                     f"(a multiple of steps_per_execution={k}), or None for "
                                     "one pass over a finite dataset")
            if value is not None and value % k:
                raise MetaModelError(
                    f"{where}: {name}={value} is not a multiple of steps_per_execution={k}; "
                    f"Keras would run {-(-value // k) * k} steps (use a multiple of {k})")

    @contextlib.contextmanager
    def _user_errors(self, where: str) -> Iterator[None]:
        try:
            yield
        except tf.errors.InvalidArgumentError as e:
            error = _label_error(e, where)
            if error is None:
                raise
            raise error from None

    def fit(self, x: Any = None, y: Any = None, **kwargs: Any) -> keras.callbacks.History:
        """Meta-trains on batches of episodes; ``keras.Model.fit`` with its callbacks.

        Args:
          x: the training episodes: a ``tf.data.Dataset`` of episode batches (module docstring),
            typically infinite, with ``steps_per_epoch``.
          y: must be None (labels are inside the episodes).
          **kwargs: ``keras.Model.fit`` arguments: ``epochs``, ``steps_per_epoch``,
            ``validation_data``, ``validation_steps``, ``callbacks``, ``initial_epoch``,
            ``verbose``, ...

        Returns:
          The ``History``.

        Raises:
          EpisodeError: the episodes (or ``validation_data``) lack a key, have label counts that
            differ from example counts, or hold class labels outside ``[0, ways)``.
          MetaModelError: ``steps_per_epoch`` or ``validation_steps`` is not a multiple of
            ``steps_per_execution``.

        With ``BackupAndRestore``, a run interrupted mid-epoch continues at the step where its
        backup was written, with the same batches (the data stream is consumed up to that
        point, so the dataset must be the same, deterministic stream) and ends with the same
        weights as an uninterrupted run; the logs of that epoch cover the steps run after the
        restart.
        """
        if y is not None:
            raise EpisodeError(f"fit: labels travel inside the episodes; y must be None, got "
                               f"{_describe(y)}")
        self._check_data(x, "fit")
        if kwargs.get("validation_data") is not None:
            self._check_data(kwargs["validation_data"], "validation_data")
        self._check_steps("fit", steps_per_epoch=kwargs.get("steps_per_epoch"),
                          validation_steps=kwargs.get("validation_steps"))
        epochs = kwargs.get("epochs", 1)
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise MetaModelError(f"fit: epochs={epochs!r}; it must be a positive integer")
        steps = kwargs.get("steps_per_epoch")
        per_epoch = None
        if isinstance(x, tf.data.Dataset):
            cardinality = int(x.cardinality())
            per_epoch = cardinality if cardinality > 0 else None
        if isinstance(x, tf.data.Dataset):
            # Episode batches are already random draws; Keras would only warn that it cannot
            # shuffle a dataset.
            kwargs.setdefault("shuffle", False)
        callbacks = kwargs.pop("callbacks", None)
        given = (callbacks.callbacks if isinstance(callbacks, keras.callbacks.CallbackList)
                 else list(callbacks or []))
        # Keras' BackupAndRestore writes its files in place; this one replaces them atomically.
        listed = [_AtomicBackupAndRestore.of(c)
                  if type(c) is keras.callbacks.BackupAndRestore else c for c in given]
        # First: an empty dataset is refused before any other callback ends the epoch.
        listed.insert(0, _NoData())
        # Only a backup of this very run says where it stopped (weights loaded by another
        # callback, e.g. a warm start, are no position in this run's data).
        if any(isinstance(c, keras.callbacks.BackupAndRestore) for c in listed):
            self._resume = _Resume(self, steps_per_epoch=steps, batches_per_epoch=per_epoch,
                                   initial_epoch=kwargs.get("initial_epoch", 0))
            # Last, so that it runs after BackupAndRestore has restored the weights.
            listed.append(self._resume)
        if isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks.callbacks[:] = listed
            for callback in listed:
                callback.set_model(self)
        else:
            callbacks = listed
        try:
            with self._user_errors("fit"):
                return super().fit(x, callbacks=callbacks, **kwargs)
        finally:
            self._resume = None

    def evaluate(self, x: Any = None, y: Any = None, **kwargs: Any) -> Any:
        """Adapts to held-out episodes and reports the metrics (``keras.Model.evaluate``).

        Raises:
          EpisodeError: as :meth:`fit`.
        """
        if y is not None:
            raise EpisodeError(f"evaluate: labels travel inside the episodes; y must be None, "
                               f"got {_describe(y)}")
        cached = kwargs.get("_use_cached_eval_dataset")
        if not cached:
            self._check_data(x, "evaluate")
            self._check_steps("evaluate", steps=kwargs.get("steps"))
        with self._user_errors("evaluate"):
            result = super().evaluate(x, **kwargs)
        # The trackers count the tasks evaluated (a dataset of unknown size may be empty).
        if not any(float(t.count.numpy()) for t in self._trackers.values()):
            raise EpisodeError(_empty_message("validation_data" if cached else "evaluate"))
        return result

    def predict(self, x: Any, **kwargs: Any) -> Any:
        """Adapted query outputs of every episode, ``[episodes, Q, ...]`` (``keras.Model.predict``).

        Raises:
          EpisodeError: as :meth:`fit` (``query_y`` is not needed).
        """
        self._check_data(x, "predict", need_query_y=False)
        self._check_steps("predict", steps=kwargs.get("steps"))
        counter = _NoData()
        callbacks = kwargs.pop("callbacks", None)
        if isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks.append(counter)
        else:
            callbacks = [*(callbacks or []), counter]
        try:
            with self._user_errors("predict"):
                return super().predict(x, callbacks=callbacks, **kwargs)
        except UnboundLocalError:  # Keras 3.15 on a dataset that gives no batch
            if counter.batches:
                raise
            raise EpisodeError(_empty_message("predict")) from None

    def export(self, filepath: str, **kwargs: Any) -> str:
        """Writes the fast-adaptation SavedModel; see :func:`export` (replaces Keras' export)."""
        return export(self, filepath, **kwargs)
