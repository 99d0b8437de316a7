"""The config schema, its validation, JSON round trips, and the checks of a binary's config flag."""

from __future__ import annotations

import os
import sys

import pytest

from tests.helpers import REPO



def test_bad_configs_are_rejected_naming_the_field():
    from tfmeta import config as config_lib

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
    from tfmeta import config as config_lib

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
    with pytest.raises(config_lib.ConfigError, match="'model.widths' applies to model 'resnet12'"):
        config_lib.validate(config(**{"model.widths": (8, 16, 32, 64)}))
    with pytest.raises(config_lib.ConfigError,
                       match=r"\['model.downsample', 'model.head'\] apply to model 'conv4'"):
        config_lib.validate(config(**{"model.name": "resnet12", "data.image_size": 84,
                                      "model.downsample": "maxpool", "model.head": "flatten"}))
    for fields in ({"model.name": "resnet12", "data.image_size": 12},
                   {"model.downsample": "maxpool", "data.image_size": 15}):
        with pytest.raises(config_lib.ConfigError, match="'data.image_size'.*at least 16x16"):
            config_lib.validate(config(**fields))
    c = config(**{"model.name": "resnet12", "model.widths": (8, 16, 32, 64)})
    assert config_lib.from_json(config_lib.to_json(c)).model.widths == (8, 16, 32, 64)


def test_config_json_round_trip():
    from tfmeta import config as config_lib

    c = config_lib.base_config()
    c.data.ways, c.inner.lr = 20, 0.1
    assert config_lib.from_json(config_lib.to_json(c)).to_dict() == c.to_dict()


def test_shipped_configs_are_valid():
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from distributed_driver import load_config

    from tfmeta import config as config_lib

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
    with pytest.raises(ValueError, match="unknown variant"):
        load_config(os.path.join(REPO, "configs", "omniglot_maml.py:3way"))


def test_the_config_flag_checks_name_the_file_and_the_field(tmp_path):
    from tfmeta import config as config_lib

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
    from tfmeta import config as config_lib
    from tfmeta import errors

    assert issubclass(config_lib.ConfigError, errors.UserError)
    assert issubclass(config_lib.ConfigError, ValueError)  # what callers caught before


def test_choices_are_stated_once():
    from tfmeta import choices, distribute, inner_loop
    from tfmeta import config as config_lib

    assert config_lib.ALGORITHMS is choices.ALGORITHMS
    assert config_lib.BN_MODES is choices.BN_MODES is inner_loop.BN_MODES
    assert distribute.STRATEGIES is choices.STRATEGIES
