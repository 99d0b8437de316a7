"""Meta-training with Keras' ``compile()`` and ``fit()``: a tfmeta algorithm as a ``keras.Model``.

    import keras
    import tfmeta
    from tfmeta.keras import MetaModel

    model = tfmeta.omniglot_conv4(num_classes=5)
    meta = MetaModel(tfmeta.MAML(model, inner_lr=0.4, inner_steps=1, eval_inner_steps=3))
    meta.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=10)
    meta.fit(episodes, epochs=20, steps_per_epoch=100, validation_data=val_episodes,
             validation_steps=25, callbacks=[keras.callbacks.BackupAndRestore("/tmp/backup")])
    meta.export("/tmp/maml_export", input_transform="omniglot")  # as ``tfmeta.train`` writes

Data: any dataset whose elements are episode batches, dicts with ``support_x [tasks, S, ...]``,
``support_y [tasks, S]``, ``query_x [tasks, Q, ...]`` and ``query_y [tasks, Q]`` (the leading
axis is the tasks of a meta-batch), for example :func:`tfmeta.data.episodes.episode_dataset` or
:func:`tfmeta.data.sinusoid.task_dataset` with ``batch_size``. Labels travel inside the episodes, so
``fit`` takes no ``y``.

What each step does:

* ``train_step``: one meta-iteration, exactly the algorithm's ``meta_step`` on the batch (under a
  strategy on each replica's share, divided by the *global* number of tasks); the compiled
  optimizer applies the meta-gradients to ``algorithm.meta_variables`` (which include learned
  inner learning rates and per-step batch-norm weights) and the algorithm's state variables
  (batch-norm statistics, per-step statistics, Reptile's carried Adam state) take the mean of the
  tasks' values over all replicas, as in :mod:`tfmeta.run.trainer`.
* ``test_step``: ``algorithm.evaluate``: adaptation with the evaluation inner steps and the
  algorithm's batch-norm mode, metrics after (and before) adaptation.
* ``predict_step`` (and ``meta_model(batch)``): ``algorithm.adapt_and_predict``: the outputs of
  each episode's queries after adapting to its support set, ``[tasks, Q, ...]``.

Logged metrics (per epoch, a mean over tasks; ``val_`` prefixed for validation data): ``loss``
(query loss after adaptation, the meta-objective for MAML), ``loss_pre`` (before adaptation), and
for classification ``accuracy`` (after adaptation) and ``accuracy_pre``.

Weights. ``trainable_weights`` are exactly ``algorithm.meta_variables`` and
``non_trainable_weights`` ``algorithm.state_variables`` plus the meta-iteration counter, so the
optimizer, ``get_weights``/``set_weights`` (EarlyStopping's ``restore_best_weights``) and
``save_weights``/``load_weights`` (ModelCheckpoint, BackupAndRestore) cover the learned inner
learning rates, per-step batch norm and carried optimizer state too.

Refused with one line before anything runs or is written (docs/keras.md, "What is refused"):
examples of another shape than the network takes, integer pixels, empty datasets (the counters
stay unchanged), networks built under a mixed-precision policy, damaged or missing weights files
(loading is all or nothing), an image export without its input transform. ``save_weights`` and
``BackupAndRestore``'s files are written atomically: a process killed while writing leaves the
previous complete file.

The native ``.keras`` format is not supported: it rebuilds a model from a JSON config, and a
tfmeta algorithm (its inner-loop options, learned-rate layout, Reptile's minibatch schedule) is
a Python object with no such config. ``save_weights``/``load_weights`` into a ``MetaModel`` built
the same way restore everything, and :meth:`MetaModel.export` writes the self-contained
fast-adaptation SavedModel for serving.

Modules: :mod:`~tfmeta.keras.model` (``MetaModel``), :mod:`~tfmeta.keras.episodes` (input
checks), :mod:`~tfmeta.keras.backups` (atomic weights files, exact resume),
:mod:`~tfmeta.keras.export` (``export``), :mod:`~tfmeta.keras.errors`.

The package is named after the library it adapts to, like ``tf.keras``: absolute imports make
``import keras`` inside it the real Keras, and tfmeta's modules are run with ``python -m``, never
as scripts from inside the package directory (the only way the name could shadow Keras).
"""

from __future__ import annotations

from tfmeta.keras.backups import write_file_atomically
from tfmeta.keras.episodes import check_episode_inputs, check_episode_structure
from tfmeta.keras.errors import AlgorithmTypeError, EpisodeError, MetaModelError, WeightsFileError
from tfmeta.keras.export import TRANSFORM_PRESETS, algorithm_name, export, export_metadata
from tfmeta.keras.export import input_transform_for
from tfmeta.keras.model import MetaModel

__all__ = ["AlgorithmTypeError", "EpisodeError", "MetaModel", "MetaModelError",
           "TRANSFORM_PRESETS", "WeightsFileError", "algorithm_name", "check_episode_inputs",
           "check_episode_structure", "export", "export_metadata", "input_transform_for",
           "write_file_atomically"]
