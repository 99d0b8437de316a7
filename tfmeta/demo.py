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

from tfmeta.run import cli
from tfmeta.run import config as config_lib

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
    if result.returncode == 2:
        sys.exit(2)  # a user error: the step printed its one `error:` line
    if result.returncode:
        sys.exit(f"step failed with exit code {result.returncode}: {' '.join(args)}")
    return result.stdout or ""


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.fail(f"unexpected arguments: {argv[1:]}")
    from tfmeta.run import demo_data
    from tfmeta.data import omniglot
    from tfmeta.run import workdir as workdir_lib

    workdir = workdir_lib.normalize(_WORKDIR.value)  # '~' and relative paths, as in train
    config = _CONFIG.value or _default_config()
    data_dir = _DATA_DIR.value
    overrides = [f"--config.{o}" for o in _OVERRIDES.value]
    # The config file and the override names, before minutes of data preparation.
    config_lib.check_config_argv(["tfmeta.train", f"--config={config}", *overrides])
    print("== 1. Omniglot through tensorflow-datasets, episodes, pipeline throughput")
    t0 = time.perf_counter()
    try:
        data = omniglot.load(data_dir=data_dir or None, subset="small")
    except (ConnectionError, FileNotFoundError) as e:  # offline without the archives, say
        return cli.fail(str(e))
    print(f"{demo_data.describe_data(data)}, loaded in {time.perf_counter() - t0:.1f}s")
    print(demo_data.describe_episodes(data))
    print("\n" + demo_data.describe_throughput(data))

    run_dir = os.path.join(workdir, "run")
    if data_dir:
        overrides.append(f"--config.data.data_dir={data_dir}")
    print("\n== 2. Meta-train (resumes if the work directory already has checkpoints)")
    _run([sys.executable, "-m", "tfmeta.train", f"--config={config}", f"--workdir={run_dir}",
          *overrides])
    print("\n== 3. Evaluate on held-out characters")
    _run([sys.executable, "-m", "tfmeta.evaluate", f"--workdir={run_dir}", "--split=test",
          f"--episodes={_EPISODES.value}"])

    print("\n== 4. Adapt the exported SavedModel to a folder of unseen characters")
    cfg = workdir_lib.load_config(run_dir)
    support, query = demo_data.write_adapt_folders(os.path.join(workdir, "folders"), data,
                                                   cfg.data.ways, cfg.data.shots)
    table = _run([sys.executable, "-m", "tfmeta.adapt",
                  f"--saved_model={os.path.join(run_dir, 'export')}", f"--support={support}",
                  f"--query={query}"], capture=True)
    print(demo_data.describe_adaptation(table, query, cfg.data.ways))
    print(f"\nDone. Everything is in {workdir}; TensorBoard: tensorboard --logdir={run_dir}")
    return 0


def run() -> None:
    """Console-script entry point."""
    cli.run(main)


if __name__ == "__main__":
    run()
