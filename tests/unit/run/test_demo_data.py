"""tfmeta.run.demo_data: what the demo shows of Omniglot, and the folders it adapts to.

The demo binary itself runs the whole pipeline (minutes); test_cli_errors.py checks its --help.
"""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image

from tfmeta.run import demo_data
from tfmeta.data import image_folders
from tfmeta.serving import serving_client


def test_data_episodes_and_throughput_are_described(omniglot_small):
    assert re.fullmatch(r"Omniglot \(small archives\): \d+ characters x 20 drawings, 28x28 uint8, "
                        r"[\d.]+ MB in memory", demo_data.describe_data(omniglot_small))
    text = demo_data.describe_episodes(omniglot_small)
    lines = text.splitlines()
    assert lines[:2] == ["", "episode 0: support_x (5, 28, 28, 1), query_x (10, 28, 28, 1)"]
    labels = [line for line in lines if line.startswith("  label ")]
    assert len(labels) == 10
    # Every support image is found among the training characters, by its pixels.
    assert all(line.split(": ", 1)[1] in omniglot_small.characters for line in labels), labels
    assert re.fullmatch(r"input pipeline: \d+ episodes/s \(5-way 1-shot, 15 queries; .*\)",
                        demo_data.describe_throughput(omniglot_small, seconds=0.2, batch=4))


def test_adapt_folders_hold_unseen_characters_dark_on_white_and_are_scored(omniglot_small,
                                                                           tmp_path):
    support, query = demo_data.write_adapt_folders(str(tmp_path), omniglot_small, 5, 2)
    classes, files, labels = image_folders.read_support(support)
    assert len(classes) == 5 and labels == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    queries = image_folders.read_queries([query])
    assert [os.path.splitext(os.path.basename(f))[0] for f in queries] == classes
    with Image.open(queries[0]) as image:
        pixels = np.asarray(image)
    assert pixels.shape == (28, 28) and np.median(pixels) == 255 and pixels.min() < 128
    # The demo scores the table tfmeta.adapt prints: each query file is named after its class.
    predictions = [serving_client.Prediction(file=f, label=c, probability=0.9, probabilities={})
                   for f, c in zip(queries, classes[:4] + [classes[0]])]
    table = serving_client.format_table(predictions)
    assert demo_data.describe_adaptation(table, query, 5) == (
        "4/5 unseen characters classified correctly after adapting to one example each "
        "(chance: 20%)")
