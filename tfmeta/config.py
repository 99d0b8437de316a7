"""Experiment configuration: the single source of defaults, and validation.

Every experiment is an ``ml_collections.ConfigDict`` built on :func:`base_config`. The files in
``configs/`` only override fields; any field not defined here is rejected by :func:`validate`, so a
typo in a config file or on the command line fails before training instead of being ignored.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import ml_collections

ALGORITHMS = ("maml", "fomaml", "reptile")
TASKS = ("omniglot", "sinusoid")
MODELS = ("conv4", "mlp")
OUTER_OPTIMIZERS = ("adam", "sgd")
INNER_OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "linear")
BN_MODES = ("transductive", "support", "running")
DTYPES = ("float32", "bfloat16")
SPLIT_SCHEMES = ("maml", "lake")
SUBSETS = ("full", "small")
DRAWINGS_PER_CHARACTER = 20


class ConfigError(ValueError):
    """A config field has a value that is not allowed."""


def base_config() -> ml_collections.ConfigDict:
    """Returns the complete config schema with default values (5-way 1-shot MAML on Omniglot)."""
    c = ml_collections.ConfigDict()
    c.algorithm = "maml"  # maml (second order) | fomaml | reptile
    c.task = "omniglot"  # omniglot | sinusoid
    c.seed = 0
    c.dtype = "float32"  # float32 | bfloat16 (compute dtype; fast weights stay float32)

    c.data = ml_collections.ConfigDict()
    c.data.split_scheme = "maml"  # maml (1100/100/423 shuffled) | lake (background/evaluation)
    c.data.subset = "full"  # full archives | small (small1 + small2, for quick runs)
    c.data.ways = 5
    c.data.shots = 1  # support examples per class at evaluation (and training, see train_shots)
    c.data.train_shots = 0  # 0 = same as shots (Reptile trains with more shots than it tests)
    c.data.queries = 1  # query examples per class
    c.data.rotate = True  # rotate each sampled class by a random multiple of 90 degrees
    c.data.image_size = 28
    c.data.data_dir = ""  # TFDS data dir; "" = TFDS default / $TFDS_DATA_DIR
    c.data.archives_dir = ""  # offline archives; "" = $TFMETA_OMNIGLOT_ARCHIVES, then manual dir
    c.data.k_support = 10  # sinusoid: support points per task
    c.data.k_query = 10  # sinusoid: query points per task

    c.model = ml_collections.ConfigDict()
    c.model.name = "conv4"  # conv4 | mlp
    c.model.filters = 64

    c.inner = ml_collections.ConfigDict()
    c.inner.lr = 0.4
    c.inner.steps = 1
    c.inner.eval_steps = 3
    c.inner.grad_clip = 0.0  # 0 = no clipping of inner gradients (global norm)
    c.inner.optimizer = "sgd"  # reptile only: sgd | adam (beta1 = 0, as in the Reptile paper)
    c.inner.batch_size = 0  # reptile only: support minibatch per inner step; 0 = whole support
    c.inner.bn_mode = "transductive"  # transductive | support | running

    c.outer = ml_collections.ConfigDict()
    c.outer.optimizer = "adam"
    c.outer.lr = 1e-3  # Adam meta learning rate (MAML) or meta step size epsilon (Reptile)
    c.outer.schedule = "constant"  # constant | linear (annealed to 0 at the last iteration)

    c.train = ml_collections.ConfigDict()
    c.train.meta_batch_size = 32  # global number of tasks per meta-iteration
    c.train.iterations = 60000
    c.train.steps_per_loop = 100  # meta-iterations per compiled call
    c.train.log_every = 500
    c.train.checkpoint_every = 2000
    c.train.keep_checkpoints = 3
    c.train.eval_every = 5000  # validation interval; 0 = only at the end
    c.train.eval_episodes = 200  # validation episodes
    c.train.jit_compile = False  # XLA for the train loop (always on for TPU)

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "test"
    c.eval.episodes = 600
    c.eval.batch_size = 8  # tasks evaluated per replica per call
    c.eval.seed = 1234  # evaluation episodes are fixed, so numbers are comparable across runs
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks an Omniglot config to a CPU-sized end-to-end run on the small archives.

    A couple of hundred meta-iterations of a narrow network: it checks train -> evaluate ->
    export in about a minute on 2 CPU cores; it is not a result.
    """
    c.data.subset = "small"
    c.data.ways, c.data.shots, c.data.queries = 5, 1, 5
    c.model.filters = 16
    c.train.iterations = 200
    c.train.steps_per_loop = 10
    c.train.log_every = 50
    c.train.checkpoint_every = 50
    c.train.eval_every = 100
    c.train.eval_episodes = 40
    c.eval.episodes = 100
    c.eval.batch_size = 10
    return c


def _check_unknown(config: Mapping[str, Any], schema: Mapping[str, Any], prefix: str) -> None:
    for key, value in config.items():
        name = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(
                f"unknown config field '{name}'; allowed fields here: {sorted(schema.keys())}")
        if isinstance(schema[key], Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config field '{name}' must be a group, got {value!r}")
            _check_unknown(value, schema[key], name + ".")


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"config field '{name}' is {value!r}; allowed values: {list(allowed)}")


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config field '{name}' is {value!r}; it must be {bound}")


def train_shots(config: ml_collections.ConfigDict) -> int:
    """Support examples per class used for meta-training."""
    return config.data.train_shots or config.data.shots


def validate(config: ml_collections.ConfigDict, *, num_replicas: int = 1,
             split_classes: Mapping[str, int] | None = None) -> None:
    """Checks every field of an experiment config before anything is trained.

    Args:
      config: the experiment config.
      num_replicas: replicas of the strategy the run will use; the meta-batch must divide evenly.
      split_classes: classes available per split (``{"train": 1100, ...}``); when given, the number
        of ways is checked against it.

    Raises:
      ConfigError: naming the field, its value and what is allowed.
    """
    _check_unknown(config.to_dict(), base_config().to_dict(), "")
    _one_of("algorithm", config.algorithm, ALGORITHMS)
    _one_of("task", config.task, TASKS)
    _one_of("dtype", config.dtype, DTYPES)
    _one_of("model.name", config.model.name, MODELS)
    _one_of("outer.optimizer", config.outer.optimizer, OUTER_OPTIMIZERS)
    _one_of("outer.schedule", config.outer.schedule, SCHEDULES)
    _one_of("inner.optimizer", config.inner.optimizer, INNER_OPTIMIZERS)
    _one_of("inner.bn_mode", config.inner.bn_mode, BN_MODES)
    for name in ("inner.lr", "outer.lr", "inner.steps", "inner.eval_steps",
                 "train.meta_batch_size", "train.iterations", "train.steps_per_loop",
                 "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                 "eval.episodes", "eval.batch_size", "data.image_size"):
        group, field = name.split(".")
        _positive(name, config[group][field])
    for name in ("inner.grad_clip", "inner.batch_size", "train.eval_every",
                 "train.eval_episodes", "data.train_shots"):
        group, field = name.split(".")
        _positive(name, config[group][field], allow_zero=True)
    if config.algorithm != "reptile" and config.inner.optimizer != "sgd":
        raise ConfigError(
            f"config field 'inner.optimizer' is {config.inner.optimizer!r}; MAML adapts with "
            "'sgd' only (an Adam inner loop is a Reptile option)")

    batch = config.train.meta_batch_size
    if batch % num_replicas:
        raise ConfigError(
            f"config field 'train.meta_batch_size' is {batch}; it must be divisible by the "
            f"{num_replicas} replicas of the strategy (e.g. {max(1, batch // num_replicas) * num_replicas})")

    if config.task == "omniglot":
        _one_of("data.split_scheme", config.data.split_scheme, SPLIT_SCHEMES)
        _one_of("data.subset", config.data.subset, SUBSETS)
        _one_of("eval.split", config.eval.split, ("train", "validation", "test"))
        _one_of("model.name", config.model.name, ("conv4",))
        for name in ("data.ways", "data.shots", "data.queries"):
            _positive(name, config.data[name.split(".")[1]])
        shots = max(train_shots(config), config.data.shots)
        if shots + config.data.queries > DRAWINGS_PER_CHARACTER:
            raise ConfigError(
                f"config fields 'data.shots'/'data.train_shots' ({shots}) + 'data.queries' "
                f"({config.data.queries}) = {shots + config.data.queries}; Omniglot has "
                f"{DRAWINGS_PER_CHARACTER} drawings per character, so it must be <= "
                f"{DRAWINGS_PER_CHARACTER}")
        if config.algorithm == "reptile" and config.inner.batch_size > config.data.ways * shots:
            raise ConfigError(
                f"config field 'inner.batch_size' is {config.inner.batch_size}; it must be <= the "
                f"support set size ways*shots = {config.data.ways * shots} (or 0 for all)")
        if split_classes is not None:
            for split, classes in split_classes.items():
                if config.data.ways > classes:
                    raise ConfigError(
                        f"config field 'data.ways' is {config.data.ways}; the '{split}' split of "
                        f"scheme '{config.data.split_scheme}' ({config.data.subset} archives) has "
                        f"only {classes} characters, so ways must be <= {classes}")
    else:
        _one_of("model.name", config.model.name, ("mlp",))
        _positive("data.k_support", config.data.k_support)
        _positive("data.k_query", config.data.k_query)
        if config.inner.bn_mode != "transductive":
            raise ConfigError("config field 'inner.bn_mode' must be 'transductive' for the "
                              "sinusoid MLP, which has no batch norm")


def to_json(config: ml_collections.ConfigDict) -> str:
    """Serialises a config (round-trips through :func:`from_json`)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
    """Rebuilds a config written by :func:`to_json`, filling fields added since with defaults."""
    config = base_config()
    config.update_from_flattened_dict(flatten(json.loads(text)))
    return config


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
