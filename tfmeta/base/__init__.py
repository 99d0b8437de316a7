"""The base tier: names and small facts every other tier shares.

The package version, the user-error class, the closed name sets (``choices``), the names inside an
exported SavedModel, how input images are made from pixels, and distribution strategies by name.
Imports nothing else of tfmeta.
"""
