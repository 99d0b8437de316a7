"""From a config to a run's objects: the model and algorithm registries, defaults from the classes."""

from __future__ import annotations

import os

import pytest

from tests.helpers import REPO

OMNIGLOT_MAML = os.path.join(REPO, "configs", "omniglot_maml.py")


def _build(**overrides):
    import sys

    import tensorflow as tf

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from distributed_driver import load_config, synthetic_omniglot

    from tfmeta.run import experiment

    narrow = {} if overrides.get("model.name") == "resnet12" else {"model.filters": 4}
    config = load_config(f"{OMNIGLOT_MAML}:smoke", {"data.image_size": 12, **narrow, **overrides})
    data = synthetic_omniglot(config.data.image_size, num_characters=300)
    return experiment.build_experiment(config, tf.distribute.get_strategy(), data=data)


def test_every_configured_algorithm_and_model_has_a_builder():
    from tfmeta.base import choices
    from tfmeta.run import config, experiment

    assert sorted(experiment.ALGORITHMS) == sorted(choices.ALGORITHMS)
    assert sorted(experiment.MODELS) == sorted(config.MODELS)


@pytest.mark.parametrize("algorithm, cls, attributes", [
    ("maml", "MAML", {"first_order": False}),
    ("fomaml", "MAML", {"first_order": True}),
    ("metasgd", "MetaSGD", {}),
    ("anil", "ANIL", {}),
    ("reptile", "Reptile", {}),
])
def test_each_algorithm_name_builds_its_class(algorithm, cls, attributes):
    exp = _build(algorithm=algorithm, **({"inner.lr": 0.001, "outer.lr": 1.0}
                                         if algorithm == "reptile" else {}))
    assert type(exp.algorithm).__name__ == cls
    for name, value in attributes.items():
        assert getattr(exp.algorithm, name) == value
    options = exp.algorithm.inner.options
    # The class's defaults, not a restatement of them in the builder.
    assert options.learned_lr == {"metasgd": "per_parameter"}.get(algorithm, "none")
    assert options.adapt == {"anil": "head"}.get(algorithm, "all")


def test_mamlpp_switches_come_from_the_class_unless_the_config_turns_them_off():
    exp = _build(algorithm="mamlpp", **{"inner.steps": 2})
    options = exp.algorithm.inner.options
    assert type(exp.algorithm).__name__ == "MAMLpp"
    assert (options.learned_lr, options.per_step_bn, options.adapt_batch_norm) == (
        "per_layer_step", True, False)
    assert exp.algorithm.multi_step_loss
    off = _build(algorithm="mamlpp", **{"inner.steps": 2, "mamlpp.learned_lr": False,
                                        "mamlpp.per_step_bn": False,
                                        "mamlpp.multi_step_loss": False})
    options = off.algorithm.inner.options
    assert (options.learned_lr, options.per_step_bn) == ("none", False)
    assert not off.algorithm.multi_step_loss


@pytest.mark.parametrize("overrides, layer, shape", [
    ({"model.name": "resnet12", "data.image_size": 16, "model.widths": (2, 3, 4, 5)},
     "block3_pool", (None, 1, 1, 5)),
    ({"model.downsample": "maxpool", "model.head": "flatten", "data.image_size": 16},
     "flatten", (None, 4)),
])
def test_model_registry_builds_each_network_from_the_config(overrides, layer, shape):
    exp = _build(**overrides)
    # The input takes the source's channels (1 for Omniglot) and size.
    assert exp.model.input_shape == (None, 16, 16, 1)
    assert exp.model.get_layer(layer).output.shape == shape
    assert exp.model.output_shape == (None, exp.config.data.ways)


def test_conv4_builder_passes_the_source_channels():
    from tfmeta.run import config as config_lib, experiment, tasks

    source = tasks.TaskSource(make_dataset=None, num_outputs=5, input_shape=(32, 32, 3),
                              classification=True)
    config = config_lib.base_config()
    model = experiment.MODELS["conv4"](config, source, seed=0)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 5)
    config.model.name = "resnet12"
    config.model.widths = (2, 2, 2, 2)
    model = experiment.MODELS["resnet12"](config, source, seed=0)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 5)
