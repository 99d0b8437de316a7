"""What the demo (:mod:`tfmeta.demo`) shows of Omniglot, and the image folders it adapts to.

Episodes sampled from the training characters are described by the character each support
label is; the input pipeline's speed is measured for a couple of seconds; and unseen test
characters are written as PNG folders in the layout :mod:`tfmeta.data.image_folders` reads, each query
file named after its true class, so that the classifier's answers can be scored. Everything works
on an :class:`tfmeta.data.omniglot.OmniglotData` already loaded.
"""

from __future__ import annotations

import os
import time

import numpy as np

from tfmeta.data import episodes, omniglot


def describe_data(data: omniglot.OmniglotData) -> str:
    """Describes a loaded Omniglot subset in one line.

    Args:
      data: the loaded Omniglot subset (the demo loads the small one).

    Returns:
      Characters, drawings per character, image size and memory taken.
    """
    return (f"Omniglot (small archives): {data.num_characters} characters x "
            f"{data.images.shape[1]} drawings, {data.images.shape[2]}x{data.images.shape[3]} "
            f"uint8, {data.images.nbytes / 1e6:.1f} MB in memory")


def describe_episodes(data: omniglot.OmniglotData, count: int = 2, *, seed: int = 0) -> str:
    """Samples 5-way 1-shot episodes of MAML's training characters and names their classes.

    Each support image is identified by its pixels among the training characters (rotations
    included, as episodes rotate characters), to show what was drawn.

    Args:
      data: the loaded Omniglot subset.
      count: how many episodes to describe.
      seed: the episode stream's seed.

    Returns:
      Text: for each episode (each starting with an empty line) its tensors' shapes, then one line
      per label with the character's name, or ``?`` if no character matches.
    """
    pool = omniglot.split(data, scheme="maml", split="train")
    spec = episodes.EpisodeSpec(ways=5, shots=1, queries=2)
    names = np.array(data.characters)[omniglot.split_indices(data, "maml", "train")]
    lines = []
    for i, episode in enumerate(episodes.episode_dataset(pool, spec, seed=seed).take(count)):
        lines.append(f"\nepisode {i}: support_x {tuple(episode['support_x'].shape)}, "
                     f"query_x {tuple(episode['query_x'].shape)}")
        for label in range(spec.ways):
            image = episode["support_x"].numpy()[label * spec.shots, :, :, 0]
            match = next((names[c] for c in range(len(pool)) for r in range(4)
                          if np.any(np.all(np.rot90(pool[c], r, axes=(1, 2)) ==
                                           np.round(image * 255), axis=(1, 2)))), "?")
            lines.append(f"  label {label}: {match}")
    return "\n".join(lines)


def describe_throughput(data: omniglot.OmniglotData, *, seconds: float = 2.0,
                        batch: int = 64) -> str:
    """Measures the input pipeline on MAML's training characters, roughly.

    Args:
      data: the loaded Omniglot subset.
      seconds: how long to draw batches (after a first, untimed one).
      batch: episodes per batch.

    Returns:
      One line: 5-way 1-shot episodes with 15 queries per class sampled per second.
    """
    pool = omniglot.split(data, scheme="maml", split="train")
    stream = episodes.episode_dataset(pool, episodes.EpisodeSpec(5, 1, 15), seed=1,
                                      batch_size=batch)
    iterator = iter(stream)
    next(iterator)
    t0, count = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        next(iterator)
        count += batch
    return (f"input pipeline: {count / (time.perf_counter() - t0):.0f} episodes/s "
            "(5-way 1-shot, 15 queries; benchmarks/episodes.py measures it properly)")


def write_adapt_folders(root: str, data: omniglot.OmniglotData, ways: int,
                        shots: int) -> tuple[str, str]:
    """Writes PNG folders of unseen test characters, drawn as users have them: dark on white.

    The characters are spread over MAML's test split; drawing 19 of each is its query.

    Args:
      root: where ``support/`` and ``query/`` are written (created if missing).
      data: the loaded Omniglot subset.
      ways: how many characters.
      shots: support drawings per character.

    Returns:
      ``(support, query)``: ``support/<character>/<d>.png`` for the first ``shots`` drawings of
      each character, and ``query/<character>.png``, named after its true class.
    """
    from PIL import Image

    test = omniglot.split_indices(data, "maml", "test")
    indices = test[:: max(1, len(test) // ways)][:ways]  # spread over the test alphabets
    support, query = os.path.join(root, "support"), os.path.join(root, "query")
    for c in indices:
        name = data.characters[c].replace("/", "_")
        os.makedirs(os.path.join(support, name), exist_ok=True)
        for d in range(shots):
            Image.fromarray(255 - data.images[c, d]).save(os.path.join(support, name, f"{d}.png"))
        os.makedirs(query, exist_ok=True)
        Image.fromarray(255 - data.images[c, 19]).save(os.path.join(query, f"{name}.png"))
    return support, query


def describe_adaptation(table: str, query: str, ways: int) -> str:
    """Scores the table ``tfmeta.adapt`` printed for the folders of :func:`write_adapt_folders`.

    Args:
      table: the printed table (see :func:`tfmeta.serving.serving_client.format_table`).
      query: the query folder; each of its files is named after its true class.
      ways: the model's N, for the chance level.

    Returns:
      One line: how many of the table's rows for files in ``query`` name the true class.
    """
    rows = [line.split() for line in table.splitlines() if line.startswith(query)]
    correct = sum(os.path.splitext(os.path.basename(r[0]))[0] == r[1] for r in rows)
    return (f"{correct}/{len(rows)} unseen characters classified correctly after adapting to one "
            f"example each (chance: {100 / ways:.0f}%)")
