r"""The main job, end to end: Omniglot -> episodes -> meta-train -> evaluate -> export -> adapt.

    python -m tfmeta.demo [--workdir=/tmp/tfmeta-demo] [--config=configs/omniglot_maml.py:smoke]

1. prepares Omniglot through TFDS (offline from ``$TFMETA_OMNIGLOT_ARCHIVES`` when set) and prints
   a few sampled episodes and the input pipeline's throughput;
2. meta-trains the config (by default the CPU-sized ``smoke`` variant) with ``tfmeta.train``;
3. evaluates it on held-out characters with ``tfmeta.evaluate``;
4. writes folders of PNGs of unseen test characters and classifies them with ``tfmeta.adapt``
   through the exported SavedModel.

Every step is the same command a user would type; each is printed before it runs.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

from absl import app, flags

from tfmeta import cli

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/tfmeta-demo", "Where everything is written.")
_CONFIG = flags.DEFINE_string(
    "config", "", "Config to train (default: configs/omniglot_maml.py:smoke of this checkout).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data dir (default: TFDS's default).")
_EPISODES = flags.DEFINE_integer("episodes", 200, "Test episodes to evaluate.", lower_bound=1)
_OVERRIDES = flags.DEFINE_multi_string(
    "override", [], "Extra config overrides passed to tfmeta.train, e.g. train.iterations=50.")


def _default_config() -> str:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(repo, "configs", "omniglot_maml.py")
    if not os.path.exists(path):
        raise app.UsageError(f"{path} not found: pass --config=PATH_TO/omniglot_maml.py:smoke")
    return f"{path}:smoke"


def _run(args: list[str], *, capture: bool = False) -> str:
    print("\n$ " + " ".join(shlex.quote(a) for a in args), flush=True)
    result = subprocess.run(args, check=False, text=True,
                            stdout=subprocess.PIPE if capture else None)
    if capture:
        print(result.stdout, end="", flush=True)
    if result.returncode:
        sys.exit(f"step failed with exit code {result.returncode}: {' '.join(args)}")
    return result.stdout or ""


def _episodes_and_throughput(data_dir: str) -> None:
    import numpy as np

    from tfmeta import episodes, omniglot

    t0 = time.perf_counter()
    data = omniglot.load(data_dir=data_dir or None, subset="small")
    print(f"Omniglot (small archives): {data.num_characters} characters x "
          f"{data.images.shape[1]} drawings, {data.images.shape[2]}x{data.images.shape[3]} uint8, "
          f"{data.images.nbytes / 1e6:.1f} MB in memory, loaded in {time.perf_counter() - t0:.1f}s")
    pool = omniglot.split(data, scheme="maml", split="train")
    spec = episodes.EpisodeSpec(ways=5, shots=1, queries=2)
    names = np.array(data.characters)[omniglot.split_indices(data, "maml", "train")]
    for i, episode in enumerate(episodes.episode_dataset(pool, spec, seed=0).take(2)):
        print(f"\nepisode {i}: support_x {tuple(episode['support_x'].shape)}, "
              f"query_x {tuple(episode['query_x'].shape)}")
        for label in range(spec.ways):
            image = episode["support_x"].numpy()[label * spec.shots, :, :, 0]
            # Identify the character by its pixels (rotations included) to show what was drawn.
            match = next((names[c] for c in range(len(pool)) for r in range(4)
                          if np.any(np.all(np.rot90(pool[c], r, axes=(1, 2)) ==
                                           np.round(image * 255), axis=(1, 2)))), "?")
            print(f"  label {label}: {match}")
    batch = 64
    stream = episodes.episode_dataset(pool, episodes.EpisodeSpec(5, 1, 15), seed=1,
                                      batch_size=batch)
    iterator = iter(stream)
    next(iterator)
    t0, count = time.perf_counter(), 0
    while time.perf_counter() - t0 < 2.0:
        next(iterator)
        count += batch
    print(f"\ninput pipeline: {count / (time.perf_counter() - t0):.0f} episodes/s "
          "(5-way 1-shot, 15 queries; benchmarks/episodes.py measures it properly)")


def _write_adapt_folders(root: str, data_dir: str, ways: int, shots: int) -> tuple[str, str]:
    """PNG folders of unseen test characters, drawn as users have them: dark strokes on white."""
    from PIL import Image

    from tfmeta import omniglot

    data = omniglot.load(data_dir=data_dir or None, subset="small")
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


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.fail(f"unexpected arguments: {argv[1:]}")
    from tfmeta import workdir as workdir_lib

    workdir = workdir_lib.normalize(_WORKDIR.value)  # '~' and relative paths, as in train
    config = _CONFIG.value or _default_config()
    data_dir = _DATA_DIR.value
    print("== 1. Omniglot through tensorflow-datasets, episodes, pipeline throughput")
    try:
        _episodes_and_throughput(data_dir)
    except (ConnectionError, FileNotFoundError) as e:  # offline without the archives, say
        return cli.fail(str(e))

    run_dir = os.path.join(workdir, "run")
    overrides = [f"--config.{o}" for o in _OVERRIDES.value]
    if data_dir:
        overrides.append(f"--config.data.data_dir={data_dir}")
    print("\n== 2. Meta-train (resumes if the work directory already has checkpoints)")
    _run([sys.executable, "-m", "tfmeta.train", f"--config={config}", f"--workdir={run_dir}",
          *overrides])
    print("\n== 3. Evaluate on held-out characters")
    _run([sys.executable, "-m", "tfmeta.evaluate", f"--workdir={run_dir}", "--split=test",
          f"--episodes={_EPISODES.value}"])

    print("\n== 4. Adapt the exported SavedModel to a folder of unseen characters")
    from tfmeta import workdir as workdir_lib

    cfg = workdir_lib.load_config(run_dir)
    support, query = _write_adapt_folders(os.path.join(workdir, "folders"), data_dir,
                                          cfg.data.ways, cfg.data.shots)
    table = _run([sys.executable, "-m", "tfmeta.adapt",
                  f"--saved_model={os.path.join(run_dir, 'export')}", f"--support={support}",
                  f"--query={query}"], capture=True)
    # Each query file is named after its true class: count the rows predicted correctly.
    rows = [line.split() for line in table.splitlines() if line.startswith(query)]
    correct = sum(os.path.splitext(os.path.basename(r[0]))[0] == r[1] for r in rows)
    print(f"{correct}/{len(rows)} unseen characters classified correctly after adapting to one "
          f"example each (chance: {100 / cfg.data.ways:.0f}%)")
    print(f"\nDone. Everything is in {workdir}; TensorBoard: tensorboard --logdir={run_dir}")
    return 0


def run() -> None:
    """Console-script entry point."""
    cli.run(main)


if __name__ == "__main__":
    run()
