"""Episode sampling: contents recovered from pixels, determinism, batching, distribution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfmeta.data import episodes, omniglot
from tfmeta.data.episodes import EpisodeSpec

from tests.helpers import REPO


def synthetic_pool(num_classes: int = 12, drawings: int = 20, size: int = 6,
                   seed: int = 0) -> np.ndarray:
    """Random noise images: every (class, drawing, rotation) is unique."""
    return np.random.default_rng(seed).integers(
        0, 256, (num_classes, drawings, size, size), dtype=np.uint8)


def _pixel_index(pool: np.ndarray) -> dict[bytes, set[tuple[int, int, int]]]:
    """Maps image bytes -> {(class, drawing, rotation)} over all four rotations."""
    index: dict[bytes, set] = {}
    for c in range(pool.shape[0]):
        for d in range(pool.shape[1]):
            for k in range(4):
                index.setdefault(np.rot90(pool[c, d], k).tobytes(), set()).add((c, d, k))
    return index


def _distinct_drawings(candidates: list[set[int]]) -> bool:
    """Whether each image can be given its own drawing (bipartite matching)."""
    owner: dict[int, int] = {}

    def assign(i: int, seen: set[int]) -> bool:
        for d in candidates[i]:
            if d not in seen:
                seen.add(d)
                if d not in owner or assign(owner[d], seen):
                    owner[d] = i
                    return True
        return False

    return all(assign(i, set()) for i in range(len(candidates)))


def identify(episode, pool: np.ndarray, spec: EpisodeSpec,
             index: dict | None = None) -> list[tuple[int, int]]:
    """Recovers (class, rotation) per label from pixels and checks the episode.

    Asserts: images are exact pool drawings (possibly rotated); the support and
    query images of a label share one class and one rotation and are distinct
    drawings; labels cover 0..N-1 with the expected counts.
    """
    index = _pixel_index(pool) if index is None else index
    xs = np.concatenate([np.asarray(episode["support_x"]), np.asarray(episode["query_x"])])
    ys = np.concatenate([np.asarray(episode["support_y"]), np.asarray(episode["query_y"])])
    assert xs.dtype == np.float32 and 0.0 <= xs.min() and xs.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(ys, minlength=spec.ways),
                                  [spec.shots + spec.queries] * spec.ways)
    as_uint8 = np.rint(xs[..., 0] * 255).astype(np.uint8)
    identities = []
    for label in range(spec.ways):
        matches = [index.get(image.tobytes(), set()) for image in as_uint8[ys == label]]
        assert all(matches), f"label {label}: an image is not a (rotated) pool drawing"
        # A symmetric or duplicated drawing can match several ways: keep the
        # (class, rotation) pairs every image agrees on, then require distinct drawings.
        common = set.intersection(*({(c, k) for c, _, k in m} for m in matches))
        valid = [(c, k) for c, k in sorted(common) if _distinct_drawings(
            [{d for c2, d, k2 in m if (c2, k2) == (c, k)} for m in matches])]
        assert valid, f"label {label}: images are not distinct drawings of one class"
        identities.append(valid[0])
    return identities


def _equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def _take(ds, n):
    return list(ds.take(n).as_numpy_iterator())


# --- Spec and validation ---------------------------------------------------------------------

@pytest.mark.parametrize("field", ["ways", "shots", "queries"])
@pytest.mark.parametrize("value", [0, -1])
def test_spec_rejects_non_positive_sizes(field, value):
    sizes = {"ways": 5, "shots": 1, "queries": 15, field: value}
    message = rf"EpisodeSpec\.{field} must be a positive int, got {value}"
    with pytest.raises(ValueError, match=message):
        EpisodeSpec(**sizes)


def test_spec_is_frozen():
    spec = EpisodeSpec(5, 1, 15)
    with pytest.raises(AttributeError):
        spec.ways = 3
    assert spec.rotate and spec.drawings_per_class == 16


def test_validate_errors_name_value_and_limit():
    pool = synthetic_pool(num_classes=12)
    with pytest.raises(ValueError, match=r"ways=13 exceeds the 12 classes.*1\.\.12"):
        episodes.validate(pool, EpisodeSpec(13, 1, 1))
    with pytest.raises(ValueError, match=r"ways=101 exceeds the 100 classes"):
        episodes.validate(100, EpisodeSpec(101, 1, 1))
    with pytest.raises(ValueError, match=r"5 \+ 16 = 21 exceeds the 20 drawings.*at most 20"):
        episodes.validate(pool, EpisodeSpec(5, 5, 16))
    with pytest.raises(ValueError, match=r"global_batch_size=6 is not divisible by the 4 replicas"):
        episodes.validate(pool, EpisodeSpec(5, 1, 1), global_batch_size=6, num_replicas=4)
    with pytest.raises(ValueError, match=r"global_batch_size must be positive, got 0"):
        episodes.validate(pool, EpisodeSpec(5, 1, 1), global_batch_size=0)
    with pytest.raises(ValueError, match=r"uint8 \[classes, drawings, S, S\], got float32"):
        episodes.validate(pool.astype(np.float32), EpisodeSpec(5, 1, 1))
    episodes.validate(pool, EpisodeSpec(12, 10, 10), global_batch_size=8, num_replicas=4)


def test_sampling_functions_validate():
    pool = synthetic_pool(num_classes=4)
    with pytest.raises(ValueError, match="ways=5 exceeds the 4 classes"):
        episodes.sample_episode(pool, EpisodeSpec(5, 1, 1), [0, 0])
    with pytest.raises(ValueError, match="exceeds the 20 drawings"):
        episodes.episode_dataset(pool, EpisodeSpec(2, 10, 11), seed=0)
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        episodes.episode_dataset(pool, EpisodeSpec(2, 1, 1), seed=0, batch_size=0)


def test_bad_split_name_error_comes_from_omniglot():
    data = omniglot.OmniglotData(synthetic_pool(), ["a"] * 12, [f"a/c{i}" for i in range(12)],
                                 np.ones(12, bool), ["images_background"] * 12)
    with pytest.raises(ValueError, match="'dev'"):
        omniglot.split(data, split="dev")


# --- Episode contents ------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [EpisodeSpec(5, 1, 15), EpisodeSpec(3, 4, 2, rotate=False)])
def test_sample_episode_contents_synthetic(spec):
    pool = synthetic_pool()
    episode = episodes.sample_episode(pool, spec, tf.constant([3, 4], tf.int64))
    n = spec.ways
    assert episode["support_x"].shape == (n * spec.shots, 6, 6, 1)
    assert episode["query_x"].shape == (n * spec.queries, 6, 6, 1)
    assert episode["support_y"].dtype == episode["query_y"].dtype == tf.int32
    identities = identify(episode, pool, spec)
    assert len({c for c, _ in identities}) == n  # distinct classes
    if not spec.rotate:
        assert all(k == 0 for _, k in identities)


def test_episode_stream_on_real_omniglot(omniglot_small):
    pool = omniglot.split(omniglot_small, "maml", "train")
    spec = EpisodeSpec(5, 2, 3)
    batches = _take(episodes.episode_dataset(pool, spec, seed=7, batch_size=4), 3)
    index = _pixel_index(pool)
    seen_rotations, label0_classes = set(), set()
    for batch in batches:
        for t in range(4):
            task = {k: v[t] for k, v in batch.items()}
            identities = identify(task, pool, spec, index)
            assert len({c for c, _ in identities}) == spec.ways
            seen_rotations |= {k for _, k in identities}
            label0_classes.add(identities[0][0])
    assert seen_rotations == {0, 1, 2, 3}
    assert len(label0_classes) > 1  # label -> class mapping changes between episodes


def test_labels_are_assigned_to_classes_in_random_order():
    pool = synthetic_pool(num_classes=5)
    spec = EpisodeSpec(5, 1, 1, rotate=False)
    orders = {tuple(c for c, _ in identify(e, pool, spec))
              for e in _take(episodes.episode_dataset(pool, spec, seed=0), 20)}
    assert len(orders) > 10


# --- Determinism and resumption --------------------------------------------------------------

def test_reproducible_and_seed_dependent():
    pool, spec = synthetic_pool(), EpisodeSpec(4, 2, 3)
    a = episodes.sample_episode(pool, spec, [1, 2])
    assert _equal(a, episodes.sample_episode(pool, spec, [1, 2]))
    assert not _equal(a, episodes.sample_episode(pool, spec, [1, 3]))
    first = _take(episodes.episode_dataset(pool, spec, seed=1), 3)
    again = _take(episodes.episode_dataset(pool, spec, seed=1), 3)
    assert all(_equal(x, y) for x, y in zip(first, again))
    assert not _equal(first[0], first[1])
    other_seed = _take(episodes.episode_dataset(pool, spec, seed=2), 3)
    other_pipeline = _take(episodes.episode_dataset(pool, spec, seed=1, pipeline_id=1), 3)
    for x, y, z in zip(first, other_seed, other_pipeline):
        assert not _equal(x, y) and not _equal(x, z)


def test_start_index_resumes_and_batching_keeps_the_stream():
    pool, spec = synthetic_pool(), EpisodeSpec(3, 1, 2)
    stream = _take(episodes.episode_dataset(pool, spec, seed=5, pipeline_id=2), 10)
    resumed = _take(episodes.episode_dataset(pool, spec, seed=5, pipeline_id=2, start_index=4), 6)
    assert all(_equal(x, y) for x, y in zip(stream[4:], resumed))
    batches = _take(episodes.episode_dataset(pool, spec, seed=5, pipeline_id=2, start_index=2,
                                             batch_size=4), 2)
    for b, batch in enumerate(batches):
        for t in range(4):
            assert _equal({k: v[t] for k, v in batch.items()}, stream[2 + 4 * b + t])
    alone = episodes.sample_episode(pool, spec, episodes.episode_seed(5, 2, 7))
    assert _equal(alone, stream[7])


def test_batched_dataset_has_static_shapes():
    spec = EpisodeSpec(5, 1, 15)
    ds = episodes.episode_dataset(synthetic_pool(size=28), spec, seed=0, batch_size=8)
    shapes = {k: tuple(s.shape) for k, s in ds.element_spec.items()}
    assert shapes == {"support_x": (8, 5, 28, 28, 1), "support_y": (8, 5),
                      "query_x": (8, 75, 28, 28, 1), "query_y": (8, 75)}
    assert ds.options().deterministic


def test_large_pool_rotates_per_batch(monkeypatch):
    # Pools too big to keep in four rotations take the per-batch path: same stream.
    pool, spec = synthetic_pool(), EpisodeSpec(4, 2, 2)
    expected = _take(episodes.episode_dataset(pool, spec, seed=3, batch_size=2), 2)
    monkeypatch.setattr(episodes, "MAX_PREROTATED_POOL_BYTES", 0)
    actual = _take(episodes.episode_dataset(pool, spec, seed=3, batch_size=2), 2)
    assert all(_equal(x, y) for x, y in zip(expected, actual))


# --- Distribution ----------------------------------------------------------------------------

_DISTRIBUTED_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf

    # Must run before any TF op: split the CPU into two logical devices.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfmeta.data import episodes

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    pool = np.random.default_rng(0).integers(0, 256, (10, 20, 6, 6), dtype=np.uint8)
    spec = episodes.EpisodeSpec(3, 1, 2)

    def first_steps(start_step, n):
        ds = episodes.distributed_dataset(strategy, pool, spec, global_batch_size=4, seed=9,
                                          start_step=start_step)
        it = iter(ds)
        steps = []
        for _ in range(n):
            per_replica = next(it)
            steps.append({k: [np.asarray(t) for t in strategy.experimental_local_results(v)]
                          for k, v in per_replica.items()})
        return steps

    steps = first_steps(0, 2)
    resumed = first_steps(1, 1)
    result = {
        "replicas": strategy.num_replicas_in_sync,
        "shapes": {k: [list(t.shape) for t in v] for k, v in steps[0].items()},
        "resume_matches": all(np.array_equal(a, b) for k in resumed[0]
                              for a, b in zip(resumed[0][k], steps[1][k])),
        "replicas_differ": not np.array_equal(*steps[0]["query_x"]),
    }
    try:
        episodes.distributed_dataset(strategy, pool, spec, global_batch_size=3, seed=0)
    except ValueError as e:
        result["error"] = str(e)
    print("RESULT " + json.dumps(result))
""")


def test_distributed_dataset_on_two_logical_cpus():
    # A subprocess: logical devices must be configured before TF initialises.
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-c", _DISTRIBUTED_SCRIPT], capture_output=True,
                         text=True, timeout=300, env=env)
    lines = [l for l in run.stdout.splitlines() if l.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["replicas"] == 2
    assert result["shapes"] == {"support_x": [[2, 3, 6, 6, 1]] * 2, "support_y": [[2, 3]] * 2,
                                "query_x": [[2, 6, 6, 6, 1]] * 2, "query_y": [[2, 6]] * 2}
    assert result["resume_matches"] and result["replicas_differ"]
    assert "global_batch_size=3 is not divisible by the 2 replicas" in result["error"]
