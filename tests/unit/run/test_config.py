"""The config schema, its validation, JSON round trips, and the checks of a binary's config flag."""

from __future__ import annotations

import os
import re
import sys

import pytest

from tests.helpers import REPO



def test_bad_configs_are_rejected_naming_the_field():
    from tfmeta.run import config as config_lib

    def check(mutate, *fragments, num_replicas=1, split_classes=None):
        c = config_lib.base_config()
        mutate(c)
        with pytest.raises(config_lib.ConfigError) as e:
            config_lib.validate(c, num_replicas=num_replicas, split_classes=split_classes)
        for fragment in fragments:
            assert fragment in str(e.value)

    check(lambda c: c.update({"algorithm": "protonet"}), "'algorithm'", "reptile")
    check(lambda c: c.inner.update({"lr": 0.0}), "'inner.lr'", "> 0")
    check(lambda c: c.outer.update({"lr": -1e-3}), "'outer.lr'")
    check(lambda c: c.inner.update({"steps": 0}), "'inner.steps'")
    check(lambda c: c.data.update({"shots": 15, "queries": 6}), "21", "<= 20")
    check(lambda c: c.data.update({"ways": 30}), "'data.ways'", "30", "<= 20",
          split_classes={"train": 1100, "validation": 20, "test": 423})
    check(lambda c: None, "'train.meta_batch_size'", "divisible", num_replicas=3)
    check(lambda c: c.data.update({"split_scheme": "random"}), "'data.split_scheme'", "lake")
    check(lambda c: c.inner.update({"bn_mode": "frozen"}), "'inner.bn_mode'", "running")

    c = config_lib.base_config()
    c.train.unknown_field = 3
    with pytest.raises(config_lib.ConfigError, match="unknown config field 'train.unknown_field'"):
        config_lib.validate(c)


def test_model_fields_belong_to_their_network():
    from tfmeta.run import config as config_lib

    def config(**fields):
        c = config_lib.base_config()
        c.update_from_flattened_dict(fields)
        return c

    config_lib.validate(config(**{"model.name": "resnet12", "data.image_size": 84}))
    config_lib.validate(config(**{"model.name": "resnet12", "data.image_size": 32,
                                  "model.widths": (8, 16, 32, 64)}))
    config_lib.validate(config(**{"model.downsample": "maxpool", "data.image_size": 16}))
    assert config_lib.base_config().model.widths == (64, 160, 320, 640)
    for widths in [(64, 160, 320), (64, 0, 320, 640), (64, 160, 320, 2.5), (64, 160, True, 640)]:
        with pytest.raises(config_lib.ConfigError, match="'model.widths'.*four positive"):
            config_lib.validate(config(**{"model.name": "resnet12", "data.image_size": 84,
                                          "model.widths": widths}))
    with pytest.raises(config_lib.ConfigError,
                       match="'model.widths' is .* model 'conv4' does not read it: it applies to "
                             "model 'resnet12'"):
        config_lib.validate(config(**{"model.widths": (8, 16, 32, 64)}))
    with pytest.raises(config_lib.ConfigError,
                       match=r"'model.downsample' is 'maxpool', 'model.head' is 'flatten', but "
                             r"model 'resnet12' does not read it: they apply to model 'conv4'"):
        config_lib.validate(config(**{"model.name": "resnet12", "data.image_size": 84,
                                      "model.downsample": "maxpool", "model.head": "flatten"}))
    for fields in ({"model.name": "resnet12", "data.image_size": 12},
                   {"model.downsample": "maxpool", "data.image_size": 15}):
        with pytest.raises(config_lib.ConfigError, match="'data.image_size'.*at least 16x16"):
            config_lib.validate(config(**fields))
    c = config(**{"model.name": "resnet12", "model.widths": (8, 16, 32, 64)})
    assert config_lib.from_json(config_lib.to_json(c)).model.widths == (8, 16, 32, 64)


def test_config_json_round_trip():
    from tfmeta.run import config as config_lib

    c = config_lib.base_config()
    c.data.ways, c.inner.lr = 20, 0.1
    assert config_lib.from_json(config_lib.to_json(c)).to_dict() == c.to_dict()


def test_shipped_configs_are_valid():
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from distributed_driver import load_config

    from tfmeta.run import config as config_lib

    for name, variants in [("omniglot_maml", ["5way1shot", "5way5shot", "20way1shot",
                                              "20way5shot", "smoke"]),
                           ("omniglot_fomaml", ["5way1shot", "20way5shot", "smoke"]),
                           ("omniglot_reptile", ["5way1shot", "20way1shot", "smoke"]),
                           ("sinusoid_maml", ["default", "smoke"]),
                           ("miniimagenet_maml", ["5way1shot", "5way5shot", "smoke"]),
                           ("cifarfs_maml", ["5way1shot", "5way5shot", "smoke"]),
                           ("images_maml", ["default", "smoke"])]:
        for variant in variants:
            config = load_config(os.path.join(REPO, "configs", f"{name}.py:{variant}"))
            config_lib.validate(config)
    with pytest.raises(ValueError,
                       match=r"get_config\('3way'\) raised ValueError: unknown variant"):
        load_config(os.path.join(REPO, "configs", "omniglot_maml.py:3way"))


def test_the_config_flag_checks_name_the_file_and_the_field(tmp_path):
    from tfmeta.run import config as config_lib

    config_file = os.path.join(REPO, "configs", "omniglot_maml.py")
    config_lib.check_config_argv(["train", f"--config={config_file}:smoke",
                                  "--config.inner.lr=0.1", "--workdir=x"])
    with pytest.raises(config_lib.ConfigError, match="unknown config field 'inner.lrr'.*'lr'"):
        config_lib.check_config_argv(["train", f"--config={config_file}", "--config.inner.lrr=1"])
    with pytest.raises(config_lib.ConfigError, match="unknown config field 'bogus'"):
        config_lib.check_config_argv(["train", f"--config={config_file}", "--config.bogus=1"])
    missing = str(tmp_path / "nope.py")
    with pytest.raises(config_lib.ConfigError, match=f"config file '{missing}' not found"):
        config_lib.check_config_argv(["train", f"--config={missing}:smoke"])
    with pytest.raises(config_lib.ConfigError, match="--config is empty"):
        config_lib.check_config_argv(["train", "--config="])


def test_config_errors_are_user_errors():
    from tfmeta.run import config as config_lib
    from tfmeta.base import errors

    assert issubclass(config_lib.ConfigError, errors.UserError)
    assert issubclass(config_lib.ConfigError, ValueError)  # what callers caught before


def test_choices_are_stated_once():
    from tfmeta.base import choices, distribute
    from tfmeta.core import inner_loop
    from tfmeta.run import config as config_lib

    assert config_lib.ALGORITHMS is choices.ALGORITHMS
    assert config_lib.BN_MODES is choices.BN_MODES is inner_loop.BN_MODES
    assert distribute.STRATEGIES is choices.STRATEGIES


def _config(spec: str = "omniglot_maml.py:smoke", **fields):
    from tfmeta.run import config as config_lib

    return config_lib.load_file(os.path.join(REPO, "configs", spec), fields)


def test_every_numeric_field_has_its_range_checked():
    from tfmeta.run import config as config_lib

    numeric = {k for k, v in config_lib.flatten(config_lib.base_config().to_dict()).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    numeric.discard("data.channels")  # a choice of 1 or 3 (config.CHANNELS)
    assert numeric == set(config_lib.RANGES), "give every numeric field a range in RANGES"
    for name, allowed in config_lib.RANGES.items():
        below = allowed.low if allowed.low_exclusive else allowed.low - (1 if allowed.integer
                                                                         else 0.5)
        bad = [below] + ([allowed.high + 1] if allowed.high is not None else [])
        if not allowed.integer:
            bad.append(float("inf"))
        for value in bad:
            c = config_lib.base_config()
            c.update_from_flattened_dict({name: value})
            with pytest.raises(config_lib.ConfigError,
                               match=f"config field '{name}' is .*; it must be") as e:
                config_lib.validate(c)
            if allowed.high is not None:
                # MAML (the default) unrolls its inner steps: their bound is lower.
                high = config_lib.MAX_UNROLLED_INNER_STEPS if name == "inner.steps" else \
                    allowed.high
                assert f"to {high}" in str(e.value), str(e.value)
    for name, value, bound in [("model.filters", 0, ">= 1"), ("model.filters", -3, ">= 1"),
                               ("data.split_seed", -1, "from 0 to 2147483647"),
                               ("data.ways", 1, ">= 2 (an episode tells at least two classes"),
                               ("inner.steps", 51, "from 1 to 50 (for algorithm 'maml'")]:
        with pytest.raises(config_lib.ConfigError,
                           match=rf"'{name}' is {value}; .*{re.escape(bound)}"):
            config_lib.validate(_config(**{name: value}))
    with pytest.raises(config_lib.ConfigError, match=r"'inner.steps' is 1001; it must be an "
                                                     r"integer from 1 to 1000 \(for algorithm "
                                                     r"'reptile'"):
        config_lib.validate(_config("omniglot_reptile.py:smoke", **{"inner.steps": 1001}))


@pytest.mark.parametrize("spec, fields, expected", [
    ("omniglot_maml.py:smoke", {"data.source": "folder:/x"},
     "'data.source' is 'folder:/x', but task 'omniglot' does not read it: .* "
     "configs/images_maml.py"),
    ("omniglot_maml.py:smoke", {"data.channels": 3},
     "'data.channels' is 3, but task 'omniglot' does not read it: Omniglot is read as 1-channel"),
    ("omniglot_maml.py:smoke", {"data.normalize": True}, "'data.normalize' is True, but task"),
    ("omniglot_maml.py:smoke", {"data.k_query": 5}, "'data.k_query' is 5, but task 'omniglot'"),
    ("omniglot_maml.py:smoke", {"model.widths": (8, 8, 8, 8)}, "model 'conv4' does not read"),
    ("omniglot_maml.py:smoke", {"inner.batch_size": 2}, "algorithm 'maml' does not read it"),
    ("omniglot_maml.py:smoke", {"outer.min_lr": 1e-5}, "outer.schedule='constant' does not"),
    ("omniglot_maml.py:smoke", {"task": "images", "data.source": "omniglot", "data.channels": 3},
     "task 'images' with data.source 'omniglot' .* does not read it"),
    ("sinusoid_maml.py:smoke", {"model.filters": 8}, "'model.filters' is 8, but model 'mlp'"),
    ("sinusoid_maml.py:smoke", {"data.ways": 3}, "task 'sinusoid' does not read it: sinusoid"),
    ("sinusoid_maml.py:smoke", {"data.rotate": False}, "'data.rotate' is False, but task"),
    ("images_maml.py:smoke", {"data.split_scheme": "lake"}, "these are Omniglot options"),
    ("images_maml.py:smoke", {"data.subset": "full"}, None),  # the default: nothing to refuse
    ("images_maml.py:smoke", {"data.augment": False, "data.crop_padding": 3},
     "'data.crop_padding' is 3, but data.augment=False does not read it"),
    ("images_maml.py:smoke", {"data.storage": "memory", "data.memory_limit_mb": 10},
     "data.storage='memory' does not read it"),
    ("miniimagenet_maml.py:smoke", {"data.split_seed": 3},
     "data.source 'miniimagenet:.*' does not read it: miniimagenet has its published class split"),
    ("cifarfs_maml.py:smoke", {"data.class_lists": "/lists"}, "cifarfs has its published"),
])
def test_fields_the_run_would_ignore_are_refused(spec, fields, expected):
    from tfmeta.run import config as config_lib

    config = _config(spec, **fields)
    if expected is None:
        config_lib.validate(config)
        return
    with pytest.raises(config_lib.ConfigError, match=expected) as e:
        config_lib.validate(config)
    assert "or leave it at the default (--config." in str(e.value)


@pytest.mark.parametrize("spec", ["miniimagenet_maml.py:5way1shot", "miniimagenet_maml.py:smoke",
                                  "cifarfs_maml.py:5way5shot", "cifarfs_maml.py:smoke",
                                  "images_maml.py", "images_maml.py:smoke"])
def test_the_readme_resnet12_switch_works_on_every_colour_config(spec):
    from tfmeta.run import config as config_lib, experiment, tasks

    # README: "models conv4 (any size and channels) and resnet12 (--config.model.name=resnet12)".
    config = _config(spec, **{"model.name": "resnet12"})
    config_lib.validate(config)
    assert (config.model.filters, config.model.downsample, config.model.head) == (64, "stride",
                                                                                 "mean")
    # The user's own conv4 fields are still refused with the model switch, naming them.
    with pytest.raises(config_lib.ConfigError, match="'model.head' is 'flatten', but model "
                                                     "'resnet12' does not read it"):
        config_lib.validate(_config(spec, **{"model.name": "resnet12", "model.head": "flatten"}))
    if spec == "cifarfs_maml.py:smoke":  # the experiment builds that network (32x32, narrow)
        config = _config(spec, **{"model.name": "resnet12", "model.widths": (2, 2, 2, 2)})
        source = tasks.TaskSource(None, num_outputs=5, input_shape=(32, 32, 3),
                                  classification=True)
        model = experiment.build_model(config, source)
        assert model.get_layer("block3_pool").output.shape == (None, 2, 2, 2)


def test_a_switched_task_resets_only_the_config_files_unread_fields():
    from tfmeta.run import config as config_lib

    # The documented Omniglot-as-a-folder run: the smoke config's data.subset='small' is not read.
    config = _config(**{"task": "images", "data.source": "folder:/photos"})
    config_lib.validate(config)
    assert config.data.subset == "full" and config.model.filters == 16
    # Without the switch, or for a field the user gave, the refusal stands.
    switched_by_hand = _config()
    switched_by_hand.task, switched_by_hand.data.source = "images", "folder:/photos"
    with pytest.raises(config_lib.ConfigError, match="'data.subset' is 'small'"):
        config_lib.validate(switched_by_hand)
    with pytest.raises(config_lib.ConfigError, match="'data.subset' is 'small', but task 'images'"):
        config_lib.validate(_config(**{"task": "images", "data.source": "folder:/photos",
                                       "data.subset": "small"}))


def test_a_broken_config_file_is_named_with_its_line(tmp_path):
    from tfmeta.run import config as config_lib

    cases = {"syntax.py": ("x = 1\ndef get_config(:\n    pass\n", "line 2: SyntaxError"),
             "imports.py": ("import no_such_module_here\n", "line 1: ModuleNotFoundError"),
             "raises.py": ("def get_config():\n    c = None\n    raise RuntimeError('boom')\n",
                           "line 3: get_config() raised RuntimeError: boom"),
             "nothing.py": ("X = 1\n", "has no get_config() function"),
             "returns.py": ("def get_config():\n    return 3\n", "returned int, not a ConfigDict")}
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(config_lib.ConfigError,
                           match=re.escape(f"config file '{path}'") + ".*" + re.escape(expected)):
            config_lib.load_file(str(path))
        with pytest.raises(config_lib.ConfigError, match=re.escape(expected)):
            config_lib.check_config_argv(["train", f"--config={path}", "--workdir=x"])
