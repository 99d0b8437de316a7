"""Names in a tfmeta fast-adaptation SavedModel, shared by the exporter and its clients.

The exporter (:mod:`tfmeta.serving.graph`) writes these signatures and the metadata asset;
:mod:`tfmeta.serving.serving_client` and any other client look them up by the same names. Imports nothing.
"""

from __future__ import annotations

ADAPT = "adapt_and_predict"
ADAPT_STEPS = "adapt_and_predict_steps"
ADAPT_BATCH = "adapt_and_predict_batch"
TRANSDUCTIVE = "adapt_and_predict_transductive"
PREDICT = "predict"
METADATA = "metadata"
# The metadata JSON, also stored as an asset file beside the signatures.
METADATA_ASSET = "tfmeta.json"
# Version of the signature contract; bumped when a signature's inputs or outputs change.
FORMAT_VERSION = 2
# Largest int32: the bound of the inner_steps input.
MAX_INNER_STEPS = 2**31 - 1
