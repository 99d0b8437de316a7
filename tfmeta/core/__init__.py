"""The core tier: meta-learning on any Keras model, with no knowledge of files or configs.

Parameter-list helpers, losses, layers with exact higher derivatives, the batched (per-task
weights) model, the inner loop, and the algorithms on it (MAML family, Reptile, iMAML), plus the
standard networks. Imports only ``tfmeta.base``.
"""
