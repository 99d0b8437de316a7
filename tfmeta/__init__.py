"""tfmeta: MAML, first-order MAML and Reptile for any Keras 3 model."""

__version__ = "0.1.0"
