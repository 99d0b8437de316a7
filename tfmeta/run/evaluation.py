"""Evaluation of a built experiment under a stated protocol.

Held-out tasks of a split are adapted to with the evaluation inner steps and batch-norm mode, under
the experiment's strategy; the result is a JSON-ready record of the mean, its 95 % confidence
interval and the protocol (ways, shots, queries, inner steps, transductive or not, episodes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from tfmeta.run import config as config_lib
from tfmeta.core import layers
from tfmeta.run import tasks
from tfmeta.base.choices import BN_MODES
from tfmeta.run.experiment import Experiment


def _make_eval_fn(exp: Experiment, inner_steps: int, bn_mode: str) -> Callable:
    strategy, algorithm = exp.strategy, exp.algorithm

    @tf.function
    def eval_fn(iterator):
        per_replica = strategy.run(
            lambda b: algorithm.evaluate(b, steps=inner_steps, bn_mode=bn_mode),
            args=(next(iterator),))
        return {k: strategy.gather(v, axis=0) for k, v in per_replica.items()}

    return eval_fn


def evaluate(exp: Experiment, split: str, *, episodes: int, inner_steps: int | None = None,
             seed: int | None = None, queries: int | None = None,
             bn_mode: str | None = None) -> dict[str, Any]:
    """Adapts to ``episodes`` held-out tasks of ``split`` and summarises the post-adaptation metric.

    Args:
      exp: a built (trained or restored) experiment.
      split: ``"train"``, ``"validation"`` or ``"test"``.
      episodes: number of tasks.
      inner_steps: inner steps (default: ``inner.eval_steps``).
      seed: seed of the evaluation tasks (default: ``eval.seed``, so runs compare on the same
        tasks).
      queries: query examples per class (query points for regression); default: the config's.
      bn_mode: how queries are normalised (default: the trained ``inner.bn_mode``); with
        ``"transductive"`` the result depends on the number of queries per class.

    Returns:
      A JSON-ready dict: the metric (``accuracy`` for classification, ``mse`` for regression), its
      mean and 95% confidence interval ``1.96 * std / sqrt(n)`` (as in the MAML reference code),
      and the protocol: episodes, ways/shots/queries, inner steps, ``bn_mode`` and whether it was
      ``transductive``.

    Raises:
      config_lib.ConfigError: shots + ``queries`` more than the data source's classes have (20
        for Omniglot), or an unknown ``bn_mode``.
    """
    config = exp.config
    inner_steps = inner_steps or config.inner.eval_steps
    seed = config.eval.seed if seed is None else seed
    bn_mode = bn_mode or config.inner.bn_mode
    if bn_mode not in BN_MODES:
        raise config_lib.ConfigError(f"evaluation bn_mode is {bn_mode!r}; allowed: "
                                     f"{list(BN_MODES)}")
    classification = exp.source.classification
    queries = queries or (config.data.queries if classification else config.data.k_query)
    if classification and exp.source.examples_per_class is not None:
        # The data source owns its limit: Omniglot's 20 drawings are not a folder's.
        limit, what = exp.source.examples_per_class(split)
        if config.data.shots + queries > limit:
            raise config_lib.ConfigError(
                f"{queries} queries per class + {config.data.shots} shots = "
                f"{config.data.shots + queries} exceed the {limit} {what}; evaluate with fewer "
                "queries")
    global_batch = config.eval.batch_size * exp.strategy.num_replicas_in_sync
    dataset = tasks.distributed_dataset(exp.strategy, exp.source, split,
                                        global_batch_size=global_batch, seed=seed,
                                        queries=queries)
    key = (inner_steps, bn_mode)
    if key not in exp._eval_fns:
        exp._eval_fns[key] = _make_eval_fn(exp, inner_steps, bn_mode)
    eval_fn = exp._eval_fns[key]
    iterator = iter(dataset)
    chunks = [eval_fn(iterator) for _ in range(math.ceil(episodes / global_batch))]
    values = {k: np.concatenate([c[k].numpy() for c in chunks])[:episodes] for k in chunks[0]}
    if classification:
        name, per_task = "accuracy", values["accuracy_post"]
    else:
        name, per_task = "mse", values["loss"]
    result = {
        "split": split,
        "metric": name,
        name: float(np.mean(per_task)),
        "ci95": float(1.96 * np.std(per_task) / math.sqrt(len(per_task))),
        "episodes": int(len(per_task)),
        "step": int(exp.step.numpy()),
        "inner_steps": int(inner_steps),
        "inner_lr": float(config.inner.lr),
        "algorithm": config.algorithm,
        "bn_mode": bn_mode,
        "trained_bn_mode": config.inner.bn_mode,
        # Only transductive batch norm lets a query's answer depend on the other queries.
        "transductive": bn_mode == "transductive" and layers.has_batch_norm(exp.model),
        "seed": int(seed),
    }
    note = exp.source.result_note() if exp.source.result_note is not None else ""
    if note:  # e.g. a benchmark with classes short of images: the number is not comparable
        result["not_the_benchmark"] = note
    if classification:
        result.update(ways=config.data.ways, shots=config.data.shots, queries=int(queries),
                      split_scheme=config.data.split_scheme)
    else:
        result.update(k_support=config.data.k_support, k_query=int(queries))
    return result


def warn_if_chance(result: dict[str, Any], config: ml_collections.ConfigDict) -> bool:
    """Warns when a classification result cannot be told apart from guessing; returns whether.

    A run can finish without an error and still learn nothing (an inner learning rate of 100
    does that): the final number alone looks like a result unless someone compares it with
    1 / ways.
    """
    # One way has nothing to learn: every answer is right (and chance is 100 %).
    if result.get("metric") != "accuracy" or not result.get("ways") or result["ways"] < 2:
        return False
    chance = 1.0 / result["ways"]
    if result["accuracy"] - result["ci95"] > chance:
        return False
    logging.warning(
        "The %s accuracy %.2f%% +- %.2f%% is at chance level (1/%d ways = %.1f%%): the model did "
        "not learn. Check the learning rates (inner.lr=%g, outer.lr=%g) and the training curves "
        "(TensorBoard on the work directory).", result["split"], 100 * result["accuracy"],
        100 * result["ci95"], result["ways"], 100 * chance, config.inner.lr, config.outer.lr)
    return True
