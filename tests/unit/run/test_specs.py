"""The typed views of a validated config (tfmeta.run.specs) and the one parse of
train.tasks_in_parallel."""

import pytest

from tfmeta.run import config as config_lib
from tfmeta.run import specs


def _images_config(**fields):
    config = config_lib.base_config()
    config.task = "images"
    config.data.source = "folder:/data/photos"
    config.update_from_flattened_dict(fields)
    config_lib.validate(config)
    return config


def test_episode_shape_gives_training_shots_for_the_train_split_only():
    config = _images_config(**{"data.shots": 1, "data.train_shots": 5, "data.queries": 3})
    shape = specs.episode_shape(config)
    assert (shape.shots_of("train"), shape.shots_of("validation"), shape.shots_of("test")) == \
        (5, 1, 1)
    assert shape.needed("train") == 8 and shape.needed("test") == 4
    assert shape.needed("test", queries=10) == 11
    # train_shots 0 means data.shots.
    assert specs.episode_shape(_images_config(**{"data.shots": 2})).shots_of("train") == 2


def test_image_data_holds_the_source_and_its_split_settings():
    config = _images_config(**{"data.split_fractions": (0.5, 0.25, 0.25), "data.split_seed": 7})
    data = specs.image_data(config)
    assert data.source == "folder:/data/photos"
    assert data.fractions == (0.5, 0.25, 0.25) and data.split_seed == 7
    kwargs = data.prepare_kwargs()
    assert kwargs["fractions"] == (0.5, 0.25, 0.25) and kwargs["split_seed"] == 7
    assert kwargs["min_side"] == config.data.min_image_side
    with pytest.raises(dataclasses_frozen_error()):
        data.source = "other"


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("value, parsed", [("auto", "auto"), ("all", "all"), ("4", 4)])
def test_tasks_in_parallel_is_parsed_once_for_validation_and_the_algorithms(value, parsed):
    config = config_lib.base_config()
    config.train.tasks_in_parallel = value  # a string field: the command line gives text
    config_lib.validate(config)
    assert config_lib.tasks_in_parallel(config) == parsed
    assert specs.algorithm_options(config).tasks_in_parallel == parsed
    assert config_lib.parse_tasks_in_parallel(4) == 4


@pytest.mark.parametrize("value", ["0", "-2", "some", "2.5", " 3"])
def test_bad_tasks_in_parallel_is_one_config_error(value):
    config = config_lib.base_config()
    config.train.tasks_in_parallel = value
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.validate(config)
    assert str(info.value) == (f"config field 'train.tasks_in_parallel' is {value!r}; allowed: "
                               "a positive integer, 'all' or 'auto'")


@pytest.mark.parametrize("value", [0, -2, 2.5, True])
def test_bad_tasks_in_parallel_values_of_other_types(value):
    with pytest.raises(config_lib.ConfigError, match="allowed: a positive integer, 'all' or"):
        config_lib.parse_tasks_in_parallel(value)


def test_algorithm_options_are_the_common_constructor_arguments():
    config = config_lib.base_config()
    config.inner.grad_clip = 0.0
    options = specs.algorithm_options(config)
    assert options.name == config.algorithm and options.inner_grad_clip is None
    kwargs = options.common_kwargs(classification=False)
    assert kwargs["loss"] == "mse" and kwargs["inner_steps"] == config.inner.steps
    assert options.common_kwargs(classification=True)["loss"] == \
        "sparse_categorical_crossentropy"


def test_phase_schedule_of_each_algorithm():
    config = config_lib.base_config()
    config.algorithm = "reptile"
    assert specs.phase_schedule(config).boundaries() == ()
    config.algorithm = "fomaml"
    assert specs.phase_schedule(config).phase(10**6).kwargs() == {"first_order": True}
    config.algorithm = "maml"
    assert specs.phase_schedule(config).phase(0).kwargs() == {"first_order": False}
