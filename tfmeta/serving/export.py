"""Exporting a meta-learner as a fast-adaptation SavedModel: graph, metadata, atomic write.

The one export every path goes through (``tfmeta.train`` and ``tfmeta.export`` by way of
:mod:`tfmeta.run.exporter`, ``tfmeta.keras.export``): :mod:`tfmeta.serving.graph` builds the
module, :mod:`tfmeta.serving.metadata` completes its description and
:mod:`tfmeta.serving.writer` saves it. docs/export-and-serving.md states the contract.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import keras

from tfmeta.base import signatures
from tfmeta.serving import graph
from tfmeta.serving import metadata as metadata_lib
from tfmeta.serving import writer
from tfmeta.serving.errors import ExportError


def export(model: keras.Model, algorithm: Any, output: str, *, metadata: dict[str, Any],
           classification: bool = True, max_inner_steps: int | None = None,
           replace: bool = False, workdir: str | None = None,
           wording: writer.Wording = writer.PYTHON) -> str:
    """Exports a meta-learner as a fast-adaptation SavedModel (see :mod:`tfmeta.serving.graph`).

    Args:
      model: the built Keras model (``algorithm.model``), with the parameters to export.
      algorithm: a meta-learner (:class:`tfmeta.core.maml.MAML` and relatives, or
        :class:`tfmeta.core.reptile.Reptile`) around ``model``.
      output: SavedModel directory (local or gs://): a path that does not exist, or a previous
        tfmeta SavedModel when ``replace`` (replaced atomically); anything else is refused.
      metadata: JSON-ready description (:func:`tfmeta.serving.metadata.build`); for
        classification it must hold ``ways`` and ``image_size``, and states the input transform
        (:data:`~tfmeta.serving.metadata.TRANSFORM_FIELDS`: ``channels``, ``invert``, ``mean``,
        ``std``; without ``channels``, Omniglot's: grayscale, inverted); ``inner_steps`` is the
        default adaptation length. The export adds ``serving_bn_mode``, ``max_inner_steps`` and
        ``signatures``, and for classification every transform field and the input descriptions
        of that transform (:func:`tfmeta.serving.metadata.for_export`).
      classification: N-way image classification (True) or [*, 1] regression (False).
      max_inner_steps: largest ``inner_steps`` a client may ask for (default: the metadata's, else
        :data:`~tfmeta.serving.metadata.DEFAULT_MAX_INNER_STEPS`); at least ``inner_steps``.
      replace: whether a previous tfmeta SavedModel at ``output`` may be replaced.
      workdir: a work directory the model comes from, which ``output`` must not overwrite
        (see :func:`tfmeta.serving.writer.check_output`).
      wording: how refusals name ``output`` and ``replace``: as Python arguments by default
        (``replace=True``); the binaries pass :data:`~tfmeta.serving.writer.COMMAND_LINE`.

    Returns:
      ``output`` normalised (absolute for a local path).

    Raises:
      ExportError: the model's input or output shape does not fit the signature contract, the
        step bound is below the default steps, or the output exists and may not be replaced or
        cannot be written.
    """
    # Refused outputs fail before the (slow) tracing of the signatures.
    writer.check_output(output, replace=replace, workdir=workdir, wording=wording)
    if algorithm.model is not model:
        raise ExportError("algorithm.model must be the exported model")
    steps = int(metadata["inner_steps"])
    if max_inner_steps is None:
        max_inner_steps = int(metadata.get("max_inner_steps",
                                           max(metadata_lib.DEFAULT_MAX_INNER_STEPS, steps)))
    transform = metadata_lib.transform_from_metadata(metadata) if classification else None
    settings = graph.Settings(inner_steps=steps, max_inner_steps=int(max_inner_steps),
                              transform=transform,
                              ways=int(metadata["ways"]) if classification else None)
    graph.check_model(algorithm, settings)
    metadata = metadata_lib.for_export(
        metadata, transform=transform, max_inner_steps=settings.max_inner_steps,
        serving_bn_mode=graph.serving_bn_mode(algorithm),
        signature_names=graph.signature_names(algorithm, classification=classification))
    text = json.dumps(metadata, indent=2, sort_keys=True)
    with tempfile.TemporaryDirectory() as scratch:
        # The asset is copied into the SavedModel's assets/ under this name.
        asset = os.path.join(scratch, signatures.METADATA_ASSET)
        try:
            with open(asset, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        except OSError as e:  # the system's temporary directory is full or unwritable
            raise ExportError(f"cannot write the SavedModel's metadata to {asset!r}: "
                              f"{writer.reason(e)}") from e
        module = graph.build(algorithm, settings, metadata_json=text, asset_path=asset)
        return writer.write_atomically(module, output, signatures=graph.signature_functions(module),
                                       replace=replace, workdir=workdir, wording=wording)
