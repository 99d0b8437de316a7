"""Evaluation under a stated protocol: the chance-level warning."""

from __future__ import annotations



def test_training_that_ends_at_chance_accuracy_is_warned(caplog):
    import logging

    from tfmeta.run import config as config_lib
    from tfmeta.run import evaluation

    config = config_lib.base_config()
    config.inner.lr = 100.0
    result = {"metric": "accuracy", "accuracy": 0.2, "ci95": 0.0, "ways": 5, "split": "test"}
    with caplog.at_level(logging.WARNING):
        assert evaluation.warn_if_chance(result, config)
    assert "chance level (1/5 ways = 20.0%)" in caplog.text and "inner.lr=100" in caplog.text
    # Above chance by more than the confidence interval: no warning; regression: never.
    assert not evaluation.warn_if_chance(dict(result, accuracy=0.3, ci95=0.05), config)
    assert evaluation.warn_if_chance(dict(result, accuracy=0.23, ci95=0.05), config)
    assert not evaluation.warn_if_chance({"metric": "mse", "mse": 1.0, "ci95": 0.1}, config)
    # A perfect model is never called untrained (1 way: chance is 100 %; refused by validate).
    assert not evaluation.warn_if_chance(dict(result, accuracy=1.0, ways=1), config)
    assert not evaluation.warn_if_chance(dict(result, accuracy=1.0, ways=2), config)


def test_the_limit_on_shots_plus_queries_is_the_data_sources(tmp_path):
    """A folder's classes hold 30 images: 10 shots + 15 queries evaluate (not Omniglot's 20)."""
    import pytest
    import tensorflow as tf

    from tfmeta.run import config as config_lib
    from tfmeta.run import evaluation, experiment
    from tests.unit.data.test_image_sources import images_config, write_class_folders

    root = write_class_folders(tmp_path / "photos", [30] * 6, size=(8, 8))
    config = images_config(f"folder:{root}", shots=10, queries=15, split_fractions=(0.34, 0.33, 0.33),
                           prepared_dir=str(tmp_path / "prepared"))
    config.model.filters = 4
    config.eval.batch_size = 1
    exp = experiment.build_experiment(config, tf.distribute.get_strategy())
    result = evaluation.evaluate(exp, "validation", episodes=1, inner_steps=1)
    assert result["shots"] == 10 and result["queries"] == 15
    with pytest.raises(config_lib.ConfigError,
                       match=r"21 queries per class \+ 10 shots = 31 exceed the 30 images that 2 "
                             r"classes \(data.ways\) of split 'validation'"):
        evaluation.evaluate(exp, "validation", episodes=1, inner_steps=1, queries=21)
