"""The run tier: a training run from its config to its work directory.

The config (validated here, once), work directories, the task sources and objects of a run, the
training loop, evaluation, reports and what the binaries share. May import every lower tier.
"""
