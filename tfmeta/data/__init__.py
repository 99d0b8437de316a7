"""The data tier: sources of classes and images, their prepared per-class store, and episodes.

Readers of the named benchmarks, TFDS and image folders (all returning a class listing), image
decoding, the prepared shard store, Omniglot, sinusoid tasks and N-way K-shot episodes. Imports
only ``tfmeta.base``.
"""
