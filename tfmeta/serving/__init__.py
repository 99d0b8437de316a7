"""The serving tier: fast-adaptation SavedModels and their clients.

Imports ``tfmeta.base``, ``tfmeta.core`` and ``tfmeta.data`` (the image list and decoding shared
with training), never the run tier.
"""
