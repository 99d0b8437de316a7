"""Evaluation under a stated protocol: the chance-level warning."""

from __future__ import annotations



def test_training_that_ends_at_chance_accuracy_is_warned(caplog):
    import logging

    from tfmeta import config as config_lib
    from tfmeta import evaluation

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
