"""Experiment configuration: the single source of defaults, and validation.

Every experiment is an ``ml_collections.ConfigDict`` built on :func:`base_config`. The files in
``configs/`` only override fields; any field not defined here is rejected by :func:`validate`, so a
typo in a config file or on the command line fails before training instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Mapping

import ml_collections

from tfmeta.base import errors, signatures
from tfmeta.data import class_listing
from tfmeta.base.choices import (  # noqa: F401  (the closed sets, re-exported for the configs)
    ALGORITHMS, BENCHMARKS, BN_MODES, CHANNELS, DOWNSAMPLING, DTYPES, HEADS, INNER_OPTIMIZERS,
    MAML_FAMILY, MODELS, OUTER_OPTIMIZERS, REMAT, RESIZE, SCHEDULES, SPLIT_SCHEMES, SPLITS,
    STORAGE, SUBSETS, TASKS)
# Bounds on inner steps, so that a typo cannot trace a graph for minutes or evaluate for hours.
# MAML-family training differentiates through the inner loop, so every step is unrolled into the
# training graph (tracing time and memory grow with each one); 50 is ten times what the published
# Omniglot and mini-ImageNet setups use.
MAX_UNROLLED_INNER_STEPS = 50
# Adaptation that is not differentiated (evaluation, serving, Reptile's training) runs as a
# tf.while_loop above a few steps, so its graph does not grow; this bounds its run time.
MAX_INNER_STEPS = 1000

# Fields that may change when a work directory is resumed: how long, how often, where and how to
# evaluate. Everything else defines what the checkpoints are and is refused on resume. An entry
# ending in "." covers its whole group.
RESUMABLE_FIELDS = (
    "train.iterations", "train.steps_per_loop", "train.log_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.eval_every", "train.eval_episodes", "train.jit_compile",
    "train.max_minutes", "train.tasks_in_parallel", "train.memory_budget_mb",
    "inner.eval_steps", "eval.", "export.", "data.data_dir", "data.archives_dir",
    # How prepared images are held (memory or streamed) never changes the episodes.
    "data.prepared_dir", "data.storage", "data.memory_limit_mb",
)


def is_resumable(field: str) -> bool:
    """Whether ``field`` (dotted name) may change when a work directory is resumed."""
    return any(field == f or (f.endswith(".") and field.startswith(f)) for f in RESUMABLE_FIELDS)


class ConfigError(errors.UserError, ValueError):
    """A config field has a value that is not allowed."""


def base_config() -> ml_collections.ConfigDict:
    """Returns the complete config schema with default values (5-way 1-shot MAML on Omniglot)."""
    c = ml_collections.ConfigDict()
    c.algorithm = "maml"  # maml (second order) | fomaml | reptile | mamlpp | metasgd | anil | imaml
    c.task = "omniglot"  # omniglot | sinusoid | images (any image source, see data.source)
    c.seed = 0
    c.dtype = "float32"  # float32 | bfloat16 (compute dtype; fast weights stay float32)

    c.data = ml_collections.ConfigDict()
    # maml (1100/100/423 shuffled) | lake (background/evaluation) | reptile (1200/423 shuffled, no
    # validation split, as in openai/supervised-reptile)
    c.data.split_scheme = "maml"
    c.data.subset = "full"  # full archives | small (small1 + small2, for quick runs)
    c.data.ways = 5
    c.data.shots = 1  # support examples per class at evaluation (and training, see train_shots)
    c.data.train_shots = 0  # 0 = same as shots (Reptile trains with more shots than it tests)
    c.data.queries = 1  # query examples per class
    c.data.rotate = True  # rotate each sampled class by a random multiple of 90 degrees
    # The four rotations of every training character as separate training classes (the Reptile
    # reference's protocol, with rotate=False: validation and test characters unrotated).
    c.data.rotation_classes = False
    c.data.image_size = 28
    c.data.data_dir = ""  # TFDS data dir; "" = TFDS default / $TFDS_DATA_DIR
    c.data.archives_dir = ""  # offline archives; "" = $TFMETA_OMNIGLOT_ARCHIVES, then manual dir
    # Task 'images': where the classes come from. folder:PATH | tfds:NAME[/CONFIG] |
    # miniimagenet:PATH | tieredimagenet:PATH | cifarfs | fc100 | cub[:PATH] | omniglot
    c.data.source = ""
    c.data.channels = 1  # 1 (grayscale) | 3 (RGB): what every image is converted to
    c.data.resize = "stretch"  # stretch to image_size^2 | crop (shorter side, then centre crop)
    c.data.min_image_side = 8  # images whose shorter side is smaller are skipped (and counted)
    # Classes of a source without its own split: fractions (seeded by split_seed) or class lists.
    c.data.split_fractions = class_listing.DEFAULT_FRACTIONS
    c.data.split_seed = class_listing.DEFAULT_SPLIT_SEED
    c.data.class_lists = ""  # directory with train.txt, validation.txt (or val.txt), test.txt
    c.data.storage = "auto"  # auto (memory when it fits memory_limit_mb) | memory | stream
    c.data.memory_limit_mb = 2048
    c.data.prepared_dir = ""  # prepared per-class shards; "" = <TFDS data dir>/tfmeta_prepared
    # A named benchmark with other image counts than published is refused; True uses it, and
    # every result is marked as not the benchmark.
    c.data.allow_partial_benchmark = False
    # Per-channel normalisation: mean/std given, or () = measured on the meta-train split.
    c.data.normalize = False
    c.data.mean = ()
    c.data.std = ()
    c.data.augment = False  # meta-training only: random crop (after zero padding) and flip
    c.data.crop_padding = 8
    c.data.k_support = 10  # sinusoid: support points per task
    c.data.k_query = 10  # sinusoid: query points per task

    c.model = ml_collections.ConfigDict()
    c.model.name = "conv4"  # conv4 | resnet12 | mlp
    c.model.filters = 64
    c.model.downsample = "stride"  # conv4: stride-2 convs (MAML) | maxpool (2x2 pooling, MAML++)
    c.model.head = "mean"  # conv4: mean of the last feature map | flatten (Reptile reference)
    c.model.widths = (64, 160, 320, 640)  # resnet12: the four residual blocks' filters

    c.inner = ml_collections.ConfigDict()
    c.inner.lr = 0.4
    c.inner.steps = 1
    c.inner.eval_steps = 3
    c.inner.grad_clip = 0.0  # 0 = no clipping of inner gradients (global norm)
    c.inner.optimizer = "sgd"  # reptile only: sgd | adam (beta1 = 0, as in the Reptile paper)
    c.inner.batch_size = 0  # reptile only: support minibatch per inner step; 0 = whole support
    # Reptile only: each task's minibatches from its own shuffles (seeded by a hash of its support
    # set) rather than one schedule shared by every task, as the reference code does.
    c.inner.shuffle_per_task = False
    # Reptile with Adam only: Adam's moments and step count carry over from task to task (their
    # mean over a meta-batch), as in the reference code, instead of restarting at zero per task.
    c.inner.carry_optimizer_state = False
    c.inner.bn_mode = "transductive"  # transductive | support | running
    # MAML family: "steps" keeps only each inner step's fast weights for the meta-gradient's
    # backward pass and re-runs the step there (memory bounded in inner steps; same gradients);
    # "blocks" also re-runs each block of the model (residual / conv blocks, else layers) inside
    # the re-run step, keeping only the activations between blocks.
    c.inner.remat = "none"  # none | steps | blocks

    # MAML++ (algorithm 'mamlpp'; Antoniou et al. 2019): each of its changes to MAML is a switch.
    # The cosine meta learning rate is outer.schedule = 'cosine' (with outer.min_lr).
    # Implicit MAML (algorithm 'imaml'; Rajeswaran et al. 2019): the inner loop minimises the
    # support loss + lam / 2 * ||phi - theta||^2; the meta-gradient solves (I + H / lam) v = g by
    # cg_steps conjugate-gradient iterations.
    c.imaml = ml_collections.ConfigDict()
    c.imaml.lam = 2.0
    c.imaml.cg_steps = 5

    c.mamlpp = ml_collections.ConfigDict()
    c.mamlpp.multi_step_loss = True  # query loss after every inner step, annealed to the last
    c.mamlpp.msl_epochs = 10  # epochs over which the multi-step weights anneal; off after them
    c.mamlpp.iterations_per_epoch = 500  # MAML++ counts epochs of 500 meta-iterations
    c.mamlpp.learned_lr = True  # learned per-layer per-step inner learning rates (LSLR)
    c.mamlpp.per_step_bn = True  # per-step batch-norm weights and statistics
    c.mamlpp.first_order_iterations = 0  # derivative-order annealing: first order before this

    c.outer = ml_collections.ConfigDict()
    c.outer.optimizer = "adam"
    c.outer.lr = 1e-3  # Adam meta learning rate (MAML) or meta step size epsilon (Reptile)
    c.outer.schedule = "constant"  # constant | linear (to 0) | cosine (to min_lr), over iterations
    c.outer.min_lr = 0.0  # final learning rate of the cosine schedule

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
    # Wall-clock budget: training stops (checkpoint, validation, final evaluation, export) once
    # this many minutes have passed in total, over all the parts of a resumed run; 0 = no budget.
    c.train.max_minutes = 0.0
    # Tasks computed together: 1 (one at a time), k, 'all' (the replica's whole meta-batch) or
    # 'auto' (all on GPU/TPU; on CPU what benchmarks/train_throughput.py measured fastest).
    c.train.tasks_in_parallel = "auto"
    # Memory (MB) the 'auto' group's activations may take: the group is capped at what fits, from
    # the measured peak of one task's meta-gradient; 0 = a GPU's free memory on GPU, no limit on
    # CPU (docs/tasks-in-parallel.md).
    c.train.memory_budget_mb = 0

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "test"
    c.eval.episodes = 600
    c.eval.batch_size = 8  # tasks evaluated per replica per call
    c.eval.seed = 1234  # evaluation episodes are fixed, so numbers are comparable across runs

    c.export = ml_collections.ConfigDict()
    # Upper bound on a client's `inner_steps` in the exported SavedModel, enforced in the graph:
    # adaptation costs one forward and backward pass per step, so the bound caps a call's time.
    c.export.max_inner_steps = 100
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


def parse_tasks_in_parallel(value: Any) -> int | str:
    """``train.tasks_in_parallel`` as the algorithms take it: an int, ``'all'`` or ``'auto'``.

    The one parse of the field: the algorithms' own
    (:func:`tfmeta.core.grouping.check_tasks_in_parallel`), used by :func:`validate` and by
    :func:`tasks_in_parallel` alike.

    Raises:
      ConfigError: naming the value and what is allowed.
    """
    # Imported here: it brings TensorFlow, which the binaries import only after their flags.
    from tfmeta.core import grouping

    try:
        return grouping.check_tasks_in_parallel(value)
    except ValueError:
        raise ConfigError(f"config field 'train.tasks_in_parallel' is {value!r}; allowed: a "
                          "positive integer, 'all' or 'auto'") from None


def tasks_in_parallel(config: ml_collections.ConfigDict) -> int | str:
    """``train.tasks_in_parallel`` of ``config``, parsed (:func:`parse_tasks_in_parallel`)."""
    return parse_tasks_in_parallel(config.train.tasks_in_parallel)


# ------------------------------------------------------------------------- numeric ranges
# Largest seed: seeds go to NumPy, Keras initialisers and TensorFlow's stateless ops as int32.
MAX_SEED = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class _Range:
    """The values a numeric field may hold: ``low <= value <= high`` (``high`` None: no limit)."""

    low: float
    high: int | None = None
    integer: bool = True
    low_exclusive: bool = False  # for floats: value > low
    why: str = ""

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        low = f"> {self.low:g}" if self.low_exclusive else f">= {self.low:g}"
        if self.high is None:
            return f"{kind} {low}"
        return f"{kind} from {self.low:g} to {self.high:d}"


# Every numeric field of the schema and its range, checked in one place (:func:`_check_ranges`;
# inner.steps against its algorithm's bound there). Bounds between fields (export.max_inner_steps
# >= inner.eval_steps, shots + queries on Omniglot) are checked after these.
RANGES: dict[str, _Range] = {
    "seed": _Range(0, MAX_SEED),
    "data.ways": _Range(2, why="an episode tells at least two classes apart"),
    "data.shots": _Range(1),
    "data.train_shots": _Range(0, why="0 = data.shots"),
    "data.queries": _Range(1),
    "data.image_size": _Range(1),
    "data.min_image_side": _Range(0),
    "data.split_seed": _Range(0, MAX_SEED),
    "data.memory_limit_mb": _Range(0),
    "data.crop_padding": _Range(0),
    "data.k_support": _Range(1),
    "data.k_query": _Range(1),
    "model.filters": _Range(1),
    "inner.lr": _Range(0, integer=False, low_exclusive=True),
    "inner.steps": _Range(1, MAX_INNER_STEPS),
    "inner.eval_steps": _Range(1, MAX_INNER_STEPS),
    "inner.grad_clip": _Range(0, integer=False, why="0 = no clipping"),
    "inner.batch_size": _Range(0, why="0 = the whole support set"),
    "imaml.lam": _Range(0, integer=False, low_exclusive=True),
    "imaml.cg_steps": _Range(1),
    "mamlpp.msl_epochs": _Range(1),
    "mamlpp.iterations_per_epoch": _Range(1),
    "mamlpp.first_order_iterations": _Range(0),
    "outer.lr": _Range(0, integer=False, low_exclusive=True),
    "outer.min_lr": _Range(0, integer=False),
    "train.meta_batch_size": _Range(1),
    "train.memory_budget_mb": _Range(0, why="0 = the GPU's free memory, no limit on CPU"),
    "train.iterations": _Range(1),
    "train.steps_per_loop": _Range(1),
    "train.log_every": _Range(1),
    "train.checkpoint_every": _Range(1),
    "train.keep_checkpoints": _Range(1),
    "train.eval_every": _Range(0, why="0 = only at the end"),
    "train.eval_episodes": _Range(0, why="0 = no validation"),
    "train.max_minutes": _Range(0, integer=False, why="0 = no budget"),
    "eval.episodes": _Range(1),
    "eval.batch_size": _Range(1),
    "eval.seed": _Range(0, MAX_SEED),
    # The exported graph takes a client's inner_steps as an int32.
    "export.max_inner_steps": _Range(1, signatures.MAX_INNER_STEPS),
}


def _check_range(name: str, value: Any, allowed: _Range) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = is_number and (not allowed.integer or isinstance(value, int))
    if ok and isinstance(value, float):
        ok = math.isfinite(value)
    if ok:
        above = value > allowed.low if allowed.low_exclusive else value >= allowed.low
        ok = above and (allowed.high is None or value <= allowed.high)
    if not ok:
        why = f" ({allowed.why})" if allowed.why else ""
        raise ConfigError(f"config field '{name}' is {value!r}; it must be "
                          f"{allowed.describe()}{why}")


def _check_ranges(config: ml_collections.ConfigDict) -> None:
    """Every numeric field against :data:`RANGES` (``inner.steps`` against its algorithm's)."""
    for name, allowed in RANGES.items():
        if name == "inner.steps":
            allowed = _inner_steps_range(config.algorithm)
        _check_range(name, _get(config, name), allowed)


def _inner_steps_range(algorithm: str) -> _Range:
    if algorithm in MAML_FAMILY:
        return _Range(1, MAX_UNROLLED_INNER_STEPS, why=f"for algorithm {algorithm!r}: every "
                      "MAML-family inner step is unrolled into the training graph")
    return _Range(1, MAX_INNER_STEPS, why=f"for algorithm {algorithm!r}: the bound on one "
                  "adaptation's length")


def _get(config: ml_collections.ConfigDict, name: str) -> Any:
    """The value of the dotted field ``name``."""
    value = config
    for part in name.split("."):
        value = value[part]
    return value


# -------------------------------------------------------------- fields a run does not read
def _data_kind(config: ml_collections.ConfigDict) -> str:
    """Which reader a config's data goes through: 'omniglot', 'images' or 'sinusoid'."""
    if config.task == "images" and str(config.data.source).strip() != "omniglot":
        return "images"
    return "sinusoid" if config.task == "sinusoid" else "omniglot"


def _data_reader(config: ml_collections.ConfigDict) -> str:
    if config.task == "images" and _data_kind(config) == "omniglot":
        return "task 'images' with data.source 'omniglot' (read like task 'omniglot')"
    if config.task == "images":
        return f"task 'images' with data.source {config.data.source!r}"
    return f"task {config.task!r}"


_IMAGES_REPAIR = ("for your own images or another image source use configs/images_maml.py "
                  "(task 'images', e.g. --config.data.source=folder:PATH)")
_EPISODE_FIELDS = ("data.ways", "data.shots", "data.train_shots", "data.queries", "data.rotate",
                   "data.image_size", "data.data_dir")
_IMAGES_FIELDS = ("data.channels", "data.resize", "data.min_image_side", "data.split_fractions",
                  "data.split_seed", "data.class_lists", "data.storage", "data.memory_limit_mb",
                  "data.prepared_dir", "data.normalize", "data.mean", "data.std", "data.augment",
                  "data.crop_padding")
_OMNIGLOT_FIELDS = ("data.split_scheme", "data.subset", "data.archives_dir",
                    "data.rotation_classes")
# Image sources with a published class split of their own.
CONV4_FIELDS = ("model.filters", "model.downsample", "model.head")
RESNET12_FIELDS = ("model.widths",)


@dataclasses.dataclass(frozen=True)
class _Scope:
    """Fields that only some configs read.

    Attributes:
      fields: the dotted field names.
      reads: whether ``config`` reads them.
      reader: who ignores them, for the message (``config -> text``).
      repair: what to do instead (``config -> text``).
    """

    fields: tuple[str, ...]
    reads: Callable[[ml_collections.ConfigDict], bool]
    reader: Callable[[ml_collections.ConfigDict], str]
    repair: Callable[[ml_collections.ConfigDict], str]


def _benchmark(config: ml_collections.ConfigDict) -> str:
    return str(config.data.source).partition(":")[0].strip()


_SCOPES = (
    _Scope(("data.source",), lambda c: c.task == "images", _data_reader,
           lambda c: f"task {c.task!r} reads its own data; {_IMAGES_REPAIR}"),
    _Scope(_IMAGES_FIELDS, lambda c: _data_kind(c) == "images", _data_reader,
           lambda c: ("these options apply to task 'images' only" if c.task == "sinusoid" else
                      f"Omniglot is read as 1-channel {c.data.image_size}x{c.data.image_size} "
                      f"drawings, in memory; {_IMAGES_REPAIR}")),
    _Scope(_OMNIGLOT_FIELDS, lambda c: _data_kind(c) == "omniglot", _data_reader,
           lambda c: "these are Omniglot options (task 'omniglot')"
           + ("; an image source is split by its split folders, data.class_lists or "
              "data.split_fractions" if c.task == "images" else "")),
    _Scope(_EPISODE_FIELDS, lambda c: c.task != "sinusoid", _data_reader,
           lambda c: "sinusoid tasks have data.k_support and data.k_query points"),
    _Scope(("data.k_support", "data.k_query"), lambda c: c.task == "sinusoid", _data_reader,
           lambda c: "these are sinusoid options; episodes of classes have data.ways, data.shots "
                     "and data.queries"),
    _Scope(("data.split_fractions", "data.split_seed", "data.class_lists"),
           lambda c: _data_kind(c) != "images" or _benchmark(c) not in BENCHMARKS,
           lambda c: f"data.source {c.data.source!r}",
           lambda c: (f"{_benchmark(c)} has its published class split; these options split "
                      "the classes of folder: and tfds: sources")),
    _Scope(("data.crop_padding",), lambda c: bool(c.data.augment),
           lambda c: "data.augment=False", lambda c: "set data.augment=True to augment"),
    _Scope(("data.memory_limit_mb",), lambda c: c.data.storage == "auto",
           lambda c: f"data.storage={c.data.storage!r}",
           lambda c: "the limit chooses memory or stream for data.storage='auto' only"),
    _Scope(CONV4_FIELDS, lambda c: c.model.name == "conv4",
           lambda c: f"model {c.model.name!r}",
           lambda c: ("they apply to model 'conv4'" + (
               " (ResNet-12 has max pooling, a spatial mean and model.widths)"
               if c.model.name == "resnet12" else ""))),
    _Scope(RESNET12_FIELDS, lambda c: c.model.name == "resnet12",
           lambda c: f"model {c.model.name!r}", lambda c: "it applies to model 'resnet12'"),
    _Scope(("inner.batch_size",), lambda c: c.algorithm == "reptile",
           lambda c: f"algorithm {c.algorithm!r}",
           lambda c: "support minibatches are a Reptile option (MAML adapts on the whole "
                     "support set)"),
    _Scope(("imaml.lam", "imaml.cg_steps"), lambda c: c.algorithm == "imaml",
           lambda c: f"algorithm {c.algorithm!r}",
           lambda c: "they are implicit MAML's options (algorithm='imaml')"),
    _Scope(("outer.min_lr",), lambda c: c.outer.schedule == "cosine",
           lambda c: f"outer.schedule={c.outer.schedule!r}",
           lambda c: "it is the final learning rate of outer.schedule='cosine'"),
)


def _is_default(value: Any, default: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return tuple(value) == tuple(default)
    return value == default and type(value) is type(default)


def unread_fields(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Fields set to a non-default value that ``config``'s task, model or algorithm ignores.

    Returns:
      ``{field: why it is not read, and what to do instead}``, in schema order.
    """
    defaults = base_config()
    found: dict[str, str] = {}
    for scope in _SCOPES:
        if scope.reads(config):
            continue
        for name in scope.fields:
            if name not in found and not _is_default(_get(config, name), _get(defaults, name)):
                found[name] = f"{scope.reader(config)} does not read it: {scope.repair(config)}"
    return found


def _check_read(config: ml_collections.ConfigDict) -> None:
    """Refuses a field that would be ignored in silence, naming it, who ignores it and why."""
    unread = unread_fields(config)
    if not unread:
        return
    name, why = next(iter(unread.items()))
    same = [n for n, w in unread.items() if w == why]
    listed = ", ".join(f"'{n}' is {_get(config, n)!r}" for n in same)
    reset = " ".join(f"--config.{n}={_flag_value(_get(base_config(), n))}" for n in same)
    raise ConfigError(f"config field {listed}, but {why}; or leave "
                      f"{'it' if len(same) == 1 else 'them'} at the default ({reset})")


def _flag_value(value: Any) -> str:
    """``value`` as a ``--config.field=VALUE`` flag takes it."""
    if isinstance(value, (tuple, list)):
        return "'(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")'"
    if isinstance(value, str):
        return value or "''"
    return str(value)


def _check_model(config: ml_collections.ConfigDict) -> None:
    """The sizes of the network's fields (which network reads which field: :data:`_SCOPES`)."""
    widths = config.model.widths
    if (not isinstance(widths, (tuple, list)) or len(widths) != 4
            or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                       for w in widths)):
        raise ConfigError(f"config field 'model.widths' is {widths!r}; it must be four positive "
                          "integers (the filters of ResNet-12's four blocks)")
    # Four 2x2 max poolings (ResNet-12, conv4 with maxpool) need at least 16x16 inputs.
    if ((config.model.name == "resnet12" or config.model.downsample == "maxpool")
            and config.task != "sinusoid" and config.data.image_size < 16):
        raise ConfigError(f"config field 'data.image_size' is {config.data.image_size}; "
                          f"{config.model.name} with 2x2 max pooling in each of its four blocks "
                          "needs images of at least 16x16")


def _check_mamlpp(config: ml_collections.ConfigDict) -> None:
    """MAML++ switches belong to algorithm 'mamlpp' and need what they act on."""
    defaults = base_config().mamlpp
    if config.algorithm != "mamlpp":
        changed = [f"mamlpp.{k}" for k in defaults if config.mamlpp[k] != defaults[k]]
        if changed:
            raise ConfigError(
                f"config fields {changed} are MAML++ switches; they need algorithm='mamlpp' "
                f"(algorithm is {config.algorithm!r})")
        return
    if config.mamlpp.per_step_bn and config.model.name == "mlp":
        raise ConfigError(
            f"config field 'mamlpp.per_step_bn' is True but 'model.name' is "
            f"{config.model.name!r}, which has no batch norm; set mamlpp.per_step_bn=False")
    if config.mamlpp.multi_step_loss and config.inner.steps < 2:
        raise ConfigError(
            "config field 'mamlpp.multi_step_loss' is True but 'inner.steps' is "
            f"{config.inner.steps}; the multi-step loss needs at least 2 inner steps")


def first_order_until(config: ml_collections.ConfigDict) -> int:
    """Meta-iterations trained with first-order gradients before second order (if ever)."""
    if config.algorithm == "fomaml":
        return config.train.iterations
    if config.algorithm == "mamlpp":
        return config.mamlpp.first_order_iterations
    return 0


def multi_step_loss_until(config: ml_collections.ConfigDict) -> int:
    """Meta-iterations that use MAML++'s multi-step loss (0: none)."""
    if config.algorithm != "mamlpp" or not config.mamlpp.multi_step_loss:
        return 0
    return config.mamlpp.msl_epochs * config.mamlpp.iterations_per_epoch


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
    _one_of("inner.remat", config.inner.remat, REMAT)
    if config.inner.remat != "none" and config.algorithm not in MAML_FAMILY:
        raise ConfigError(f"config field 'inner.remat' is {config.inner.remat!r}; it is a MAML-family "
                          f"option (algorithm is {config.algorithm!r}: set inner.remat='none')")
    _one_of("model.downsample", config.model.downsample, DOWNSAMPLING)
    _one_of("model.head", config.model.head, HEADS)
    parse_tasks_in_parallel(config.train.tasks_in_parallel)
    # The network each task takes, before the fields that belong to one network are checked.
    _one_of("model.name", config.model.name,
            ("mlp",) if config.task == "sinusoid" else ("conv4", "resnet12"))
    _check_ranges(config)
    _check_read(config)
    _check_model(config)
    _check_mamlpp(config)
    if config.export.max_inner_steps < config.inner.eval_steps:
        raise ConfigError(
            f"config field 'export.max_inner_steps' is {config.export.max_inner_steps}; it must be "
            f">= inner.eval_steps ({config.inner.eval_steps}), the exported default")
    if config.outer.schedule == "cosine" and config.outer.min_lr > config.outer.lr:
        raise ConfigError(f"config field 'outer.min_lr' is {config.outer.min_lr}; the cosine "
                          f"schedule needs it <= outer.lr ({config.outer.lr})")
    if config.algorithm != "reptile" and config.inner.optimizer != "sgd":
        raise ConfigError(
            f"config field 'inner.optimizer' is {config.inner.optimizer!r}; MAML adapts with "
            "'sgd' only (an Adam inner loop is a Reptile option)")
    for name in ("inner.shuffle_per_task", "inner.carry_optimizer_state"):
        value = config.inner[name.split(".")[1]]
        if not isinstance(value, bool):
            raise ConfigError(f"config field '{name}' is {value!r}; allowed values: True, False")
        if value and config.algorithm != "reptile":
            raise ConfigError(f"config field '{name}' is True; it is a Reptile option "
                              f"(algorithm is {config.algorithm!r})")
    if config.inner.carry_optimizer_state and config.inner.optimizer != "adam":
        raise ConfigError(
            "config field 'inner.carry_optimizer_state' is True but 'inner.optimizer' is "
            f"{config.inner.optimizer!r}; only Adam has a state to carry")

    batch = config.train.meta_batch_size
    if batch % num_replicas:
        raise ConfigError(
            f"config field 'train.meta_batch_size' is {batch}; it must be divisible by the "
            f"{num_replicas} replicas of the strategy "
            f"(e.g. {max(1, batch // num_replicas) * num_replicas})")

    if config.task == "images":
        _check_images(config)
    if config.task in ("omniglot", "images"):
        _one_of("data.split_scheme", config.data.split_scheme, SPLIT_SCHEMES)
        _one_of("data.subset", config.data.subset, SUBSETS)
        _one_of("eval.split", config.eval.split, SPLITS)
        shots = max(train_shots(config), config.data.shots)
        if config.task == "omniglot":
            _check_omniglot_drawings(shots, config.data.queries)
        if config.algorithm == "reptile" and config.inner.batch_size > config.data.ways * shots:
            raise ConfigError(
                f"config field 'inner.batch_size' is {config.inner.batch_size}; it must be <= the "
                f"support set size ways*shots = {config.data.ways * shots} (or 0 for all)")
        if not isinstance(config.data.rotation_classes, bool):
            raise ConfigError(f"config field 'data.rotation_classes' is "
                              f"{config.data.rotation_classes!r}; allowed values: True, False")
        if config.task == "omniglot" and config.data.split_scheme == "reptile":
            if config.train.eval_episodes:
                raise ConfigError(
                    f"config field 'train.eval_episodes' is {config.train.eval_episodes}; split "
                    "scheme 'reptile' has no validation split (1200 train / 423 test characters, "
                    "as in the Reptile reference), so it must be 0")
            if config.eval.split == "validation":
                raise ConfigError("config field 'eval.split' is 'validation'; split scheme "
                                  "'reptile' has no validation split: use 'test' or 'train'")
        if split_classes is not None:
            check_split_classes(config, split_classes)
    elif config.inner.bn_mode != "transductive":
        raise ConfigError("config field 'inner.bn_mode' must be 'transductive' for the "
                          "sinusoid MLP, which has no batch norm")


def _check_omniglot_drawings(shots: int, queries: int) -> None:
    """Shots + queries against the drawings of an Omniglot character (the source's fact)."""
    # Imported here: the Omniglot source brings TFDS, which the binaries import after their flags.
    from tfmeta.data.omniglot import DRAWINGS_PER_CHARACTER

    if shots + queries > DRAWINGS_PER_CHARACTER:
        raise ConfigError(
            f"config fields 'data.shots'/'data.train_shots' ({shots}) + 'data.queries' "
            f"({queries}) = {shots + queries}; Omniglot has {DRAWINGS_PER_CHARACTER} drawings "
            f"per character, so it must be <= {DRAWINGS_PER_CHARACTER}")


def _check_images(config: ml_collections.ConfigDict) -> None:
    """The fields of task 'images' (any image source)."""
    d = config.data
    if not isinstance(d.source, str) or not d.source.strip():
        raise ConfigError(
            "config field 'data.source' is empty; task 'images' needs a source: folder:PATH, "
            "tfds:NAME[/CONFIG], miniimagenet:PATH, tieredimagenet:PATH, cifarfs, fc100, "
            "cub[:PATH] or omniglot")
    if d.channels not in CHANNELS:
        raise ConfigError(f"config field 'data.channels' is {d.channels!r}; allowed values: "
                          f"{list(CHANNELS)}")
    _one_of("data.storage", d.storage, STORAGE)
    _one_of("data.resize", d.resize, RESIZE)
    fractions = tuple(d.split_fractions)
    if (len(fractions) != 3 or any(not isinstance(f, (int, float)) or isinstance(f, bool)
                                   or not math.isfinite(f) or f < 0 for f in fractions)
            or abs(sum(fractions) - 1.0) > 1e-6 or fractions[0] <= 0):
        raise ConfigError(
            f"config field 'data.split_fractions' is {d.split_fractions!r}; it must be three "
            "non-negative fractions (train, validation, test) summing to 1, train > 0")
    for name in ("normalize", "augment", "allow_partial_benchmark"):
        if not isinstance(d[name], bool):
            raise ConfigError(f"config field 'data.{name}' is {d[name]!r}; allowed values: "
                              "True, False")
    mean, std = tuple(d.mean), tuple(d.std)
    if bool(mean) != bool(std):
        raise ConfigError("config fields 'data.mean' and 'data.std' must be given together "
                          f"(mean={mean}, std={std}); leave both () to measure them on the "
                          "meta-train split")
    if mean:
        if not d.normalize:
            raise ConfigError("config fields 'data.mean'/'data.std' are given but "
                              "'data.normalize' is False; set data.normalize=True")
        for name, values in (("mean", mean), ("std", std)):
            if len(values) != d.channels or not all(
                    isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise ConfigError(f"config field 'data.{name}' is {values}; it must be "
                                  f"{d.channels} finite numbers, one per channel")
        if any(v <= 0 for v in std):
            raise ConfigError(f"config field 'data.std' is {std}; every value must be > 0")


def check_split_classes(config: ml_collections.ConfigDict,
                        split_classes: Mapping[str, int]) -> None:
    """Checks that every split has at least ``data.ways`` classes (a validated config's data).

    Raises:
      ConfigError: naming the split, its class count and the ways asked for.
    """
    for split, classes in split_classes.items():
        if classes == 0 and config.data.split_scheme == "reptile":
            continue  # the empty validation split, checked by validate
        if config.task == "images" and classes == 0:
            continue  # a split the source does not have: an error only if it is used
        if config.task == "images" and config.data.ways > classes:
            raise ConfigError(
                f"config field 'data.ways' is {config.data.ways}; the '{split}' split of "
                f"{config.data.source!r} has only {classes} usable classes (with at least "
                "shots + queries images each), so ways must be <= "
                f"{classes}: lower data.ways, or give the split more classes "
                "(data.split_fractions, data.class_lists; the data summary lists the classes "
                "left out for too few images)")
        if config.data.ways > classes:
            raise ConfigError(
                f"config field 'data.ways' is {config.data.ways}; the '{split}' split of "
                f"scheme '{config.data.split_scheme}' ({config.data.subset} archives) has "
                f"only {classes} characters, so ways must be <= {classes}")


def _load_module(path: str, name: str) -> Any:
    """Executes a config file as a module (config files are loaded by path, not imported)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling_config(config_file: str, name: str) -> Any:
    """Loads the config module ``name`` next to ``config_file`` (one config file reusing another).

    Config files are loaded by path (``--config=configs/x.py``), not imported as a package, so a
    config that extends another loads it the same way.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    return _load_module(path, f"tfmeta_configs_{name[:-3]}")


def load_file(spec: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """Loads ``path.py[:variant]`` the way the binaries' ``--config`` flag does (scripts, tests).

    Args:
      spec: the config file, optionally with a variant.
      overrides: ``{"field": value}`` as ``--config.field=value`` flags give them; a switch
        (``task``, ``model.name``, ...) resets the config file's fields that are no longer read
        (see :func:`settle_fields`), as in the binaries.

    Raises:
      ConfigError: the file cannot be loaded (naming the file and line) or an override is not a
        config field.
    """
    path, _, variant = spec.partition(":")
    config = _call_config_file(path, variant)
    if overrides:
        for key, value in overrides.items():
            try:
                config.update_from_flattened_dict({key: value})
            except (KeyError, AttributeError) as e:
                raise ConfigError(f"unknown config field {key!r}") from e
        settle_fields(config, overrides)
    return config


def _call_config_file(path: str, variant: str) -> ml_collections.ConfigDict:
    """Runs ``get_config([variant])`` of the config file at ``path``.

    Raises:
      ConfigError: the file has a syntax error, raises while loading or in ``get_config``, or
        returns something else than a config; the message names the file and the line.
    """
    # Any error of a user's file is reported as one line naming the file and the line.
    try:
        module = _load_module(path, "tfmeta_loaded_config")
        if not callable(getattr(module, "get_config", None)):
            raise ConfigError(f"config file {path!r} has no get_config() function; a config "
                              "file defines get_config([variant]) returning the config")
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"config file {path!r}{_line_of(e, path)}: {type(e).__name__}: "
                          f"{_message(e)}; fix the config file") from e
    try:
        config = module.get_config(variant) if variant else module.get_config()
    except Exception as e:  # noqa: BLE001
        call = f"get_config({variant!r})" if variant else "get_config()"
        raise ConfigError(f"config file {path!r}{_line_of(e, path)}: {call} raised "
                          f"{type(e).__name__}: {_message(e)}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config file {path!r}: get_config() returned "
                          f"{type(config).__name__}, not a ConfigDict; build it on "
                          "tfmeta.run.config.base_config()")
    return config


def _message(error: BaseException) -> str:
    if isinstance(error, SyntaxError):
        return error.msg
    return errors.first_line(str(error)).strip() or "(no message)"


def _line_of(error: BaseException, path: str) -> str:
    """`` line N`` of ``path`` where ``error`` was raised (or passed through), else ``""``."""
    if isinstance(error, SyntaxError) and error.lineno:
        where = "" if os.path.abspath(error.filename or path) == os.path.abspath(path) else (
            f" (in {error.filename})")
        return f" line {error.lineno}{where}"
    import traceback

    target = os.path.abspath(path)
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if os.path.abspath(frame.filename) == target]
    return f" line {lines[-1]}" if lines else ""


def user_fields(argv: Sequence[str], flag_name: str = "config") -> list[str]:
    """The fields that ``--NAME.field=value`` flags in ``argv`` set."""
    prefix = f"--{flag_name}."
    found = []
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg.startswith(prefix):
            found.append(arg[len(prefix):].split("=", 1)[0])
    return found


# Fields that choose what a run reads: switching one on the command line makes some of the
# config file's other fields inapplicable (see settle_fields).
SWITCHES = ("task", "algorithm", "model.name", "data.source", "data.augment", "data.storage",
            "outer.schedule")


def settle_fields(config: ml_collections.ConfigDict,
                  set_by_user: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """After the user switches what a run reads, resets the config file's fields it no longer reads.

    ``--config.model.name=resnet12`` on a colour config would otherwise be refused for the conv4
    fields the config file set (filters, max pooling, flattened head), and
    ``--config.task=images`` on an Omniglot smoke config for its ``data.subset``. Only fields the
    config file set are reset (each is logged); a field the user set on the command line that
    the run does not read is still refused by :func:`validate`.

    Args:
      config: the config, after the overrides were applied.
      set_by_user: the fields the user set (command-line overrides).

    Returns:
      ``{field: the config file's value}`` for every field reset to its default.
    """
    if not any(name in set_by_user for name in SWITCHES):
        return {}
    defaults = base_config()
    dropped = {name: _get(config, name) for name in unread_fields(config)
               if name not in set_by_user}
    for name in dropped:
        config.update_from_flattened_dict({name: _get(defaults, name)})
    if dropped:
        from absl import logging

        logging.info("The config file's %s are not read with the fields set on the command line "
                     "(%s), so they are left at their defaults.",
                     ", ".join(f"{k}={v!r}" for k, v in dropped.items()),
                     ", ".join(n for n in SWITCHES if n in set_by_user))
    return dropped


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


# --------------------------------------------------------------------------- the config flag
def check_config_argv(argv: Sequence[str], flag_name: str = "config") -> None:
    """Checks a binary's ``--NAME=FILE[:variant]`` and ``--NAME.field=value`` before parsing.

    Raises:
      ConfigError: the file does not exist, or an override names a field the schema lacks.
    """
    _check_config_file(argv, flag_name)
    _check_overrides(argv, flag_name)


def _check_overrides(argv: Sequence[str], flag_name: str) -> None:
    """Names an unknown ``--config.a.b=...`` field before ml_collections fails on it.

    ml_collections raises ``AttributeError: "'b'"`` for an unknown field, naming neither the full
    field nor what is allowed.
    """
    schema = flatten(base_config().to_dict())
    groups = {k.rsplit(".", 1)[0] for k in schema if "." in k}
    prefix = f"--{flag_name}."
    for arg in argv[1:]:
        if arg == "--":
            break
        if not arg.startswith(prefix):
            continue
        field = arg[len(prefix):].split("=", 1)[0]
        if field in schema:
            continue
        group = field.rsplit(".", 1)[0] if "." in field else ""
        if group in groups:
            allowed = sorted(k.rsplit(".", 1)[1] for k in schema if k.startswith(group + "."))
            where = f"allowed fields in '{group}': {allowed}"
        else:
            top = sorted(groups | {k for k in schema if "." not in k})
            where = f"allowed groups and fields: {top}"
        raise ConfigError(f"unknown config field '{field}' (from {arg!r}); {where}")


def _config_arg(argv: Sequence[str], flag_name: str) -> str | None:
    """The value of ``--NAME=VALUE`` or ``--NAME VALUE`` in ``argv`` (the last one), or None."""
    value = None
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        if arg.startswith(f"--{flag_name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{flag_name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _check_config_file(argv: Sequence[str], flag_name: str) -> None:
    """Names a config file that does not exist or cannot be loaded, before ml_collections does.

    ml_collections defers a missing file's error to the first use of the config, which then
    surfaces as a traceback from deep inside the binary, and lets a syntax error or an exception
    in ``get_config`` through as a traceback.
    """
    value = _config_arg(argv, flag_name)
    if value is None:
        return
    path, _, variant = value.partition(":")
    if not path:
        raise ConfigError(f"--{flag_name} is empty; pass a config file such as "
                          f"--{flag_name}=configs/omniglot_maml.py:5way1shot")
    if not os.path.isfile(path):
        where = ("" if os.path.isabs(path)
                 else f" (relative to the current directory {os.getcwd()!r})")
        raise ConfigError(f"config file {path!r} not found{where}; "
                          f"pass --{flag_name}=PATH_TO/configs/NAME.py[:variant]")
    _call_config_file(path, variant)


def check_config_loaded(value: Any, flag_name: str) -> None:
    """Raises the load error that ml_collections keeps inside an unusable config, as one line."""
    error = getattr(value, "_error", None)
    if isinstance(error, BaseException):
        raise ConfigError(f"--{flag_name}: {errors.first_line(str(error))}")
