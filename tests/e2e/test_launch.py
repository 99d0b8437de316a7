"""Tests for the launch scripts (launch/*.sh, launch/slurm.sbatch, launch/k8s_job.yaml).

Everything except the two-worker smoke training runs in a few seconds: the
cluster launchers are exercised through --dry_run and with stub programs in
place of the training binary (and of ssh).
"""

import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import REPO as HELPERS_REPO

REPO = Path(HELPERS_REPO)
LAUNCH = REPO / "launch"
SHELL_SCRIPTS = sorted(LAUNCH.glob("*.sh")) + sorted(LAUNCH.glob("*.sbatch"))


def run_script(name, *args, env=None, timeout=60, cwd=REPO):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        ["bash", str(LAUNCH / name), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def command_lines(stdout):
    """Dry-run output without the comment lines."""
    return [line for line in stdout.splitlines() if line and not line.startswith("#")]


def make_executable(path, text):
    path.write_text(textwrap.dedent(text))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def tf_config_of(argv):
    """The TF_CONFIG assignment in an argv (as produced by `env TF_CONFIG=...`)."""
    for arg in argv:
        if arg.startswith("TF_CONFIG="):
            return json.loads(arg[len("TF_CONFIG="):])
    raise AssertionError(f"no TF_CONFIG in {argv}")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# Reads TF_CONFIG, records it as JSON in $STUB_OUT/worker-<index>.json, then
# exits with $STUB_FAIL_STATUS if its index is $STUB_FAIL_INDEX, and otherwise
# either exits 0 or (with STUB_SLEEP) sleeps, recording its pid.
STUB_WORKER = f"""\
#!{sys.executable}
import json, os, sys, time
cfg = json.loads(os.environ["TF_CONFIG"])
index = cfg["task"]["index"]
out = os.environ["STUB_OUT"]
with open(os.path.join(out, f"worker-{{index}}.json"), "w") as f:
    json.dump({{"tf_config": cfg, "argv": sys.argv[1:], "pid": os.getpid()}}, f)
if str(index) == os.environ.get("STUB_FAIL_INDEX"):
    time.sleep(0.5)
    print("stub worker failing", flush=True)
    sys.exit(int(os.environ.get("STUB_FAIL_STATUS", "1")))
if os.environ.get("STUB_SLEEP"):
    time.sleep(float(os.environ["STUB_SLEEP"]))
print("stub worker done", flush=True)
"""


# --------------------------------------------------------------------------
# shellcheck


def test_shellcheck_all_scripts():
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("shellcheck is not installed (apt-get install -y shellcheck)")
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    assert SHELL_SCRIPTS, "no launch scripts found"
    result = subprocess.run(
        ["shellcheck", "-x", "--shell=bash", *[str(p.relative_to(REPO)) for p in SHELL_SCRIPTS]],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [p.name for p in SHELL_SCRIPTS])
def test_scripts_are_strict_and_have_help(script):
    text = (LAUNCH / script).read_text()
    if script != "common.sh":
        assert "set -euo pipefail" in text
        result = run_script(script, "--help")
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout
        assert "--dry_run" in result.stdout


# --------------------------------------------------------------------------
# TPU pod slice

TPU_COMMON = ["--name=maml-pod", "--zone=us-central2-b", "--project=my-project"]


def ssh_remote_command(argv):
    (command,) = [a for a in argv if a.startswith("--command=")]
    return command[len("--command="):]


def worker_of(argv):
    (worker,) = [a for a in argv if a.startswith("--worker=")]
    return worker[len("--worker="):]


def test_tpu_pod_dry_run_v4_32():
    result = run_script(
        "tpu_pod.sh", "all", "--dry_run", *TPU_COMMON, "--accelerator_type=v4-32", "--spot",
        "--workdir=gs://my-bucket/omniglot", "--env=TFDS_DATA_DIR=gs://my-bucket/tfds",
        "--delete_at_end", "--", "--config=configs/omniglot_maml.py:5way1shot",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Layout: 16 chips on 4 hosts; worker 0 is the only TensorFlow client.
    assert "v4-32: 16 chips on 4 TPU VM host(s) (workers 0-3)" in out
    assert "tpu-vm-tf-2.16.1-pod-pjrt" in out
    for i in (1, 2, 3):
        assert f"# worker {i}: TPU runtime server only" in out

    commands = [shlex.split(line) for line in command_lines(out)]
    gcloud = [c for c in commands if c[0] == "gcloud"]
    for c in gcloud:
        assert "--zone=us-central2-b" in c and "--project=my-project" in c, c

    create = commands[0]
    assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
    assert create[5] == "maml-pod"
    assert "--accelerator-type=v4-32" in create
    assert "--version=tpu-vm-tf-2.16.1-pod-pjrt" in create
    assert "--spot" in create

    ssh = [c for c in gcloud if c[3:5] == ["tpu-vm", "ssh"]]
    install = [c for c in ssh if "pip install" in ssh_remote_command(c)]
    assert len(install) == 1 and worker_of(install[0]) == "all"
    assert "TPU_LOAD_LIBRARY=0" in ssh_remote_command(install[0])
    scp = [c for c in gcloud if c[3:5] == ["tpu-vm", "scp"]]
    assert len(scp) == 1 and worker_of(scp[0]) == "all"

    train = [c for c in ssh if "tfmeta.train" in ssh_remote_command(c)]
    assert len(train) == 1, "the training must start exactly once"
    assert worker_of(train[0]) == "0"
    remote = ssh_remote_command(train[0])
    assert "setsid nohup bash -c" in remote
    inner = shlex.split(remote.split("bash -c ", 1)[1])[0]
    train_argv = shlex.split(inner.split(";")[0])
    assert train_argv[0] == "env"
    assert "TPU_NAME=maml-pod" in train_argv and "TPU_LOAD_LIBRARY=0" in train_argv
    assert "TFDS_DATA_DIR=gs://my-bucket/tfds" in train_argv
    i = train_argv.index("-m")
    assert train_argv[i - 1: i + 2] == ["python3", "-m", "tfmeta.train"]
    assert train_argv[i + 2:] == [
        "--config=configs/omniglot_maml.py:5way1shot",
        "--workdir=gs://my-bucket/omniglot",
        "--strategy=tpu",
        "--tpu=maml-pod",
    ]

    logs = [c for c in ssh if "tail" in ssh_remote_command(c)]
    assert len(logs) == 1 and worker_of(logs[0]) == "0"
    assert commands[-1][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "maml-pod"]
    assert "--quiet" in commands[-1]


def test_tpu_pod_dry_run_queued_resource():
    result = run_script(
        "tpu_pod.sh", "create", "--dry_run", *TPU_COMMON, "--queued", "--spot",
        "--valid_until_duration=6h",
    )
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in command_lines(result.stdout)]
    create = commands[0]
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "maml-pod-qr"]
    for flag in ("--node-id=maml-pod", "--accelerator-type=v4-32",
                 "--runtime-version=tpu-vm-tf-2.16.1-pod-pjrt", "--spot",
                 "--valid-until-duration=6h", "--zone=us-central2-b"):
        assert flag in create, flag
    assert commands[1][3:6] == ["queued-resources", "describe", "maml-pod-qr"]

    result = run_script("tpu_pod.sh", "delete", "--dry_run", *TPU_COMMON, "--queued")
    assert result.returncode == 0, result.stderr
    (delete,) = [shlex.split(line) for line in command_lines(result.stdout)]
    assert delete[3:6] == ["queued-resources", "delete", "maml-pod-qr"]
    assert "--force" in delete and "--quiet" in delete


def test_tpu_pod_single_host_uses_local_tpu():
    result = run_script(
        "tpu_pod.sh", "train", "--dry_run", *TPU_COMMON, "--accelerator_type=v4-8",
        "--workdir=gs://b/run", "--no_follow", "--", "--config=configs/omniglot_maml.py:smoke",
    )
    assert result.returncode == 0, result.stderr
    assert "v4-8: 4 chips on 1 TPU VM host(s)" in result.stdout
    (train,) = [shlex.split(line) for line in command_lines(result.stdout)]
    assert worker_of(train) == "0"
    remote = ssh_remote_command(train)
    assert "--strategy=tpu --tpu=local" in remote
    assert "TPU_LOAD_LIBRARY" not in remote


def test_tpu_pod_remote_train_and_logs_run(tmp_path):
    """Runs the remote train/logs/stop commands locally, with a stub interpreter."""
    stub = make_executable(tmp_path / "python-stub", """\
        #!/bin/bash
        echo "stub args: $*"
        echo "TPU_NAME=${TPU_NAME:-} TPU_LOAD_LIBRARY=${TPU_LOAD_LIBRARY:-}"
        if [[ -n "${STUB_SLEEP:-}" ]]; then sleep "${STUB_SLEEP}"; fi
        exit 3
        """)
    home = tmp_path / "home"
    home.mkdir()
    args = [*TPU_COMMON, f"--python={stub}", "--workdir=gs://b/run", "--no_follow",
            "--", "--config=configs/omniglot_maml.py:smoke"]

    def remote(subcommand, extra=()):
        result = run_script("tpu_pod.sh", subcommand, "--dry_run", *args[:-2], *extra,
                            *(args[-2:] if subcommand == "train" else ()))
        assert result.returncode == 0, result.stderr
        (cmd,) = [shlex.split(line) for line in command_lines(result.stdout)]
        return ssh_remote_command(cmd)

    env = dict(os.environ, HOME=str(home))
    started = subprocess.run(["bash", "-c", remote("train")], env=env, capture_output=True,
                             text=True, timeout=30)
    assert started.returncode == 0, started.stderr
    assert "training started" in started.stdout
    logs = subprocess.run(["bash", "-c", remote("logs")], env=env, capture_output=True,
                          text=True, timeout=30)
    assert logs.returncode == 3, "logs must exit with the training's exit status"
    assert "--config=configs/omniglot_maml.py:smoke --workdir=gs://b/run --strategy=tpu --tpu=maml-pod" in logs.stdout
    assert "TPU_NAME=maml-pod TPU_LOAD_LIBRARY=0" in logs.stdout

    # A second start while one is running is refused; stop terminates it.
    env["STUB_SLEEP"] = "60"
    started = subprocess.run(["bash", "-c", remote("train")], env=env, capture_output=True,
                             text=True, timeout=30)
    assert started.returncode == 0, started.stderr
    pid = int((home / "tfmeta_logs" / "train.pid").read_text())
    assert pid_alive(pid)
    again = subprocess.run(["bash", "-c", remote("train")], env=env, capture_output=True,
                           text=True, timeout=30)
    assert again.returncode != 0 and "already running" in again.stderr
    stopped = subprocess.run(["bash", "-c", remote("stop")], env=env, capture_output=True,
                             text=True, timeout=30)
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.time() + 10
    while pid_alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "missing COMMAND"),
        (["launch"], "unknown command 'launch'"),
        (["create", "--zone=us-central2-b"], "missing --name"),
        (["create", "--name=p"], "missing --zone"),
        (["create", "--name=p", "--zone=uscentral"], "--zone"),
        (["create", "--name=Bad_Name", "--zone=us-central2-b"], "--name"),
        (["create", "--name=p", "--zone=us-central2-b", "--accelerator_type=v4-33"], "--accelerator_type"),
        (["create", "--name=p", "--zone=us-central2-b", "--accelerator_type=tpu32"], "--accelerator_type"),
        (["create", "--name=p", "--zone=us-central2-b", "--runtime_version=tpu-vm-tf-2.16.1-pjrt"],
         "single-host version"),
        (["create", "--name=p", "--zone=us-central2-b", "--frobnicate"], "unknown option '--frobnicate'"),
        (["train", "--name=p", "--zone=us-central2-b", "--", "--config=c"], "missing --workdir"),
        (["train", "--name=p", "--zone=us-central2-b", "--workdir=/tmp/run", "--", "--config=c"],
         "must be a gs:// path"),
        (["train", "--name=p", "--zone=us-central2-b", "--workdir=gs://b/r", "--", "--config=c",
          "--strategy=mirrored"], "--strategy=mirrored"),
        (["train", "--name=p", "--zone=us-central2-b", "--workdir=gs://b/r"], "no training arguments"),
        (["delete", "--name=p", "--zone=us-central2-b", "--", "--config=c"], "takes no training arguments"),
        (["create", "--name=p", "--zone=us-central2-b", "--queued", "--valid_until_duration=soon"],
         "--valid_until_duration"),
    ],
)
def test_tpu_pod_rejects_bad_arguments(args, message):
    if args:
        result = run_script("tpu_pod.sh", args[0], "--dry_run", *args[1:])
    else:
        result = run_script("tpu_pod.sh")
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "Usage:" in result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------
# GPU cluster over SSH


def test_gpu_ssh_dry_run_two_hosts(tmp_path):
    result = run_script(
        "gpu_ssh.sh", "--dry_run", "--hosts=gpu1,gpu2", "--port=12345", f"--log_dir={tmp_path}/logs",
        "--env=TFDS_DATA_DIR=gs://b/tfds", "--",
        "--config=configs/omniglot_maml.py:5way1shot", "--workdir=gs://b/run",
    )
    assert result.returncode == 0, result.stderr
    lines = command_lines(result.stdout)
    ssh_lines = [line for line in lines if line.startswith("ssh ")]
    assert len(ssh_lines) == 2
    for index, (line, host) in enumerate(zip(ssh_lines, ["gpu1", "gpu2"])):
        argv = shlex.split(line)
        assert argv[argv.index(host) - 2: argv.index(host)] == ["-o", "BatchMode=yes"]
        assert argv[-5:] == ["<", "/dev/null", ">", f"{tmp_path}/logs/worker-{index}.log", "2>&1"] or \
            argv[-4:] == [">", f"{tmp_path}/logs/worker-{index}.log", "2>&1", "&"]
        remote = argv[argv.index(host) + 1]
        remote_argv = shlex.split(remote.split("exec ", 1)[1])
        assert tf_config_of(remote_argv) == {
            "cluster": {"worker": ["gpu1:12345", "gpu2:12345"]},
            "task": {"type": "worker", "index": index},
        }
        assert "TFDS_DATA_DIR=gs://b/tfds" in remote_argv
        i = remote_argv.index("-m")
        assert remote_argv[i - 1: i + 2] == ["python3", "-m", "tfmeta.train"]
        assert remote_argv[i + 2:] == [
            "--config=configs/omniglot_maml.py:5way1shot", "--workdir=gs://b/run",
            "--strategy=multiworker",
        ]
    assert not list(tmp_path.iterdir()), "--dry_run must not create anything"


def test_gpu_ssh_failure_stops_the_other_workers(tmp_path):
    fake_ssh = make_executable(tmp_path / "fake-ssh", """\
        #!/bin/bash
        # Runs the remote command locally: ssh [options] destination command
        exec bash -c "${@: -1}"
        """)
    stub = make_executable(tmp_path / "stub-python", STUB_WORKER)
    out = tmp_path / "out"
    out.mkdir()
    start = time.time()
    result = run_script(
        "gpu_ssh.sh", f"--ssh={fake_ssh}", f"--python={stub}", "--hosts=localhost,127.0.0.1",
        "--port=23456", f"--log_dir={tmp_path}/logs", f"--run_id=t{os.getpid()}", "--",
        "--config=configs/omniglot_maml.py:smoke", "--workdir=/tmp/unused",
        env={"STUB_OUT": str(out), "STUB_FAIL_INDEX": "1", "STUB_FAIL_STATUS": "4", "STUB_SLEEP": "120"},
    )
    assert result.returncode == 4, result.stderr
    assert time.time() - start < 30
    assert "worker 1 failed with exit status 4" in result.stderr
    survivor = json.loads((out / "worker-0.json").read_text())
    assert survivor["tf_config"]["cluster"]["worker"] == ["localhost:23456", "127.0.0.1:23456"]
    deadline = time.time() + 10
    while pid_alive(survivor["pid"]) and time.time() < deadline:
        time.sleep(0.1)
    assert not pid_alive(survivor["pid"]), "the healthy worker must be stopped"
    assert "stub worker failing" in (tmp_path / "logs" / "worker-1.log").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port=1", "--", "--config=c"], "missing --hosts"),
        (["--hosts=a,b", "--", "--config=c"], "missing --port"),
        (["--hosts=a,b", "--port=http", "--", "--config=c"], "--port"),
        (["--hosts=a,b", "--port=70000", "--", "--config=c"], "--port"),
        (["--hosts=a,,b", "--port=1", "--", "--config=c"], "bad host name ''"),
        (["--hosts=me@a", "--port=1", "--", "--config=c"], "bad host name 'me@a'"),
        (["--hosts=a", "--port=1", "--config=c"], "unknown option '--config=c'"),
        (["--hosts=a", "--port=1"], "missing '--'"),
        (["--hosts=a", "--port=1", "--"], "no training arguments"),
        (["--hosts=a", "--port=1", "--", "--config=c", "--strategy=tpu"], "--strategy=tpu"),
        (["--hosts=a", "--port=1", "--env=NOEQUALS", "--", "--config=c"], "--env"),
    ],
)
def test_gpu_ssh_rejects_bad_arguments(args, message):
    result = run_script("gpu_ssh.sh", "--dry_run", *args)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "Usage:" in result.stderr


# --------------------------------------------------------------------------
# Local cluster


def test_local_cluster_dry_run_matches_gpu_ssh_tf_config(tmp_path):
    result = run_script("local_cluster.sh", "--dry_run", "--base_port=20000",
                        f"--log_dir={tmp_path}/logs", "3", "--config=c", "--workdir=/w")
    assert result.returncode == 0, result.stderr
    workers = [shlex.split(line) for line in command_lines(result.stdout) if line.startswith("env ")]
    assert len(workers) == 3
    for index, argv in enumerate(workers):
        assert tf_config_of(argv) == {
            "cluster": {"worker": ["localhost:20000", "localhost:20001", "localhost:20002"]},
            "task": {"type": "worker", "index": index},
        }
        assert argv[-7:] == ["--config=c", "--workdir=/w", "--strategy=multiworker",
                             ">", f"{tmp_path}/logs/worker-{index}.log", "2>&1", "&"]
    assert not list(tmp_path.iterdir())


def test_local_cluster_builds_tf_config(tmp_path):
    stub = make_executable(tmp_path / "stub", STUB_WORKER)
    out = tmp_path / "out"
    out.mkdir()
    result = run_script("local_cluster.sh", f"--cmd={stub}", f"--log_dir={tmp_path}/logs",
                        "--env=EXTRA=1", "2", "--config=configs/omniglot_maml.py:smoke",
                        env={"STUB_OUT": str(out)})
    assert result.returncode == 0, result.stderr
    configs = [json.loads((out / f"worker-{i}.json").read_text()) for i in range(2)]
    cluster = configs[0]["tf_config"]["cluster"]["worker"]
    assert len(cluster) == 2 and len(set(cluster)) == 2
    for index, record in enumerate(configs):
        assert record["tf_config"] == {"cluster": {"worker": cluster},
                                       "task": {"type": "worker", "index": index}}
        assert record["argv"] == ["--config=configs/omniglot_maml.py:smoke", "--strategy=multiworker"]
        assert "stub worker done" in (tmp_path / "logs" / f"worker-{index}.log").read_text()
    for address in cluster:
        host, port = address.split(":")
        assert host == "localhost" and 0 < int(port) < 65536


def test_local_cluster_failure_kills_the_rest(tmp_path):
    stub = make_executable(tmp_path / "stub", STUB_WORKER)
    out = tmp_path / "out"
    out.mkdir()
    start = time.time()
    result = run_script("local_cluster.sh", f"--cmd={stub}", f"--log_dir={tmp_path}/logs", "3",
                        env={"STUB_OUT": str(out), "STUB_FAIL_INDEX": "1", "STUB_FAIL_STATUS": "1",
                             "STUB_SLEEP": "120"})
    assert result.returncode == 1
    assert time.time() - start < 30
    assert "worker 1 failed with exit status 1" in result.stderr
    for index in (0, 2):
        pid = json.loads((out / f"worker-{index}.json").read_text())["pid"]
        assert not pid_alive(pid), f"worker {index} was left running"


def test_local_cluster_exits_nonzero_when_the_program_is_missing(tmp_path):
    result = run_script("local_cluster.sh", f"--cmd={tmp_path}/does-not-exist",
                        f"--log_dir={tmp_path}/logs", "2")
    assert result.returncode != 0


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "missing N"),
        (["two"], "N must be a positive integer, got 'two'"),
        (["0"], "N must be a positive integer, got '0'"),
        (["--base_port=99999", "2"], "--base_port"),
        (["--log_dir=", "2"], "--log_dir is empty"),
        (["--bogus", "2"], "unknown option '--bogus'"),
        (["2", "--strategy=mirrored"], "--strategy=mirrored"),
    ],
)
def test_local_cluster_rejects_bad_arguments(args, message):
    result = run_script("local_cluster.sh", "--dry_run", *args)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "Usage:" in result.stderr


def _tfmeta_train_available():
    try:
        return importlib.util.find_spec("tfmeta.train") is not None
    except ModuleNotFoundError:
        return False


def _worker_dirs(workdir):
    return sorted(p for p in workdir.rglob("*") if p.is_dir() and re.fullmatch(r"worker[_-]?\d+", p.name))


@pytest.mark.parametrize("full", [
    False, pytest.param(True, marks=pytest.mark.slow, id="full")])
def test_local_cluster_two_workers_smoke(tmp_path, request, full):
    """Two real MultiWorkerMirroredStrategy workers on the smoke config (a short version by
    default; the whole smoke run, with validation and export, under -m slow)."""
    if not _tfmeta_train_available():
        pytest.skip("tfmeta.train is not importable yet (the training binary has not landed)")
    # Prepared once, before the workers start, so they do not race to build the dataset.
    archives = request.getfixturevalue("omniglot_archives_dir")
    data_dir = request.getfixturevalue("tfds_data_dir")
    request.getfixturevalue("omniglot_small")
    workdir = tmp_path / "workdir"
    logs = tmp_path / "logs"
    result = run_script(
        "local_cluster.sh", f"--python={sys.executable}", f"--log_dir={logs}", "2",
        "--config=configs/omniglot_maml.py:smoke", f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        # The short version tests the multi-worker path, not the learning.
        *([] if full else ["--config.train.iterations=20", "--config.train.eval_every=0",
                           "--config.train.eval_episodes=0", "--config.eval.episodes=20",
                           "--noexport"]),
        env={"TFMETA_OMNIGLOT_ARCHIVES": archives, "TF_CPP_MIN_LOG_LEVEL": "2",
             "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")},
        timeout=900,
    )
    worker_logs = {p.name: p.read_text()[-3000:] for p in sorted(logs.glob("worker-*.log"))}
    assert result.returncode == 0, f"{result.stderr}\n{worker_logs}"
    assert sorted(worker_logs) == ["worker-0.log", "worker-1.log"]
    assert "worker 0 finished" in result.stderr and "worker 1 finished" in result.stderr
    assert "all 2 workers finished" in result.stderr
    assert workdir.exists() and any(workdir.iterdir()), "worker 0 wrote nothing to --workdir"
    # If the workers write per-worker outputs, they must agree.
    dirs = _worker_dirs(workdir)
    if len(dirs) >= 2:
        listings = [sorted(str(p.relative_to(d)) for p in d.rglob("*.json*")) for d in dirs]
        assert all(listing == listings[0] for listing in listings), listings
        for rel in listings[0]:
            contents = [(d / rel).read_text() for d in dirs]
            assert all(c == contents[0] for c in contents), rel


# --------------------------------------------------------------------------
# Kubernetes and Slurm


def test_k8s_indexed_job_manifest(tmp_path):
    import yaml  # PyYAML comes with ml-collections, a tfmeta dependency

    docs = list(yaml.safe_load_all((LAUNCH / "k8s_job.yaml").read_text()))
    service = next(d for d in docs if d["kind"] == "Service")
    job = next(d for d in docs if d["kind"] == "Job")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["NUM_WORKERS"]) == spec["completions"] == spec["parallelism"]
    assert env["JOB_NAME"] == job["metadata"]["name"]
    assert env["SERVICE_NAME"] == service["metadata"]["name"]
    assert int(env["WORKER_PORT"]) == service["spec"]["ports"][0]["port"]

    # Run the container's script with a stub interpreter, as pod index 1.
    make_executable(tmp_path / "python", STUB_WORKER)
    out = tmp_path / "out"
    out.mkdir()
    script_env = dict(os.environ, **env, JOB_COMPLETION_INDEX="1", STUB_OUT=str(out),
                      PATH=f"{tmp_path}:{os.environ['PATH']}")
    script_env.pop("PYTHON", None)
    result = subprocess.run([*container["command"], container["args"][0]], env=script_env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "worker-1.json").read_text())
    assert record["tf_config"] == {
        "cluster": {"worker": ["tfmeta-train-0.tfmeta-workers:12345",
                               "tfmeta-train-1.tfmeta-workers:12345"]},
        "task": {"type": "worker", "index": 1},
    }
    assert record["argv"][:2] == ["-m", "tfmeta.train"]
    assert record["argv"][-1] == "--strategy=multiworker"


def test_slurm_dry_run_and_worker_mode(tmp_path):
    result = run_script("slurm.sbatch", "--dry_run", "--hosts=node1,node2", "--port=23456",
                        f"--log_dir={tmp_path}/logs", "--", "--config=c", "--workdir=gs://b/r")
    assert result.returncode == 0, result.stderr
    (srun,) = [shlex.split(line) for line in command_lines(result.stdout) if line.startswith("srun")]
    assert "--kill-on-bad-exit=1" in srun and "--ntasks=2" in srun and "--ntasks-per-node=1" in srun
    assert f"--output={tmp_path}/logs/worker-%t.log" in srun
    assert "--workers=node1:23456,node2:23456" in srun
    assert srun[-3:] == ["--", "--config=c", "--workdir=gs://b/r"]

    # What each srun task runs: TF_CONFIG from SLURM_PROCID.
    stub = make_executable(tmp_path / "stub", STUB_WORKER)
    out = tmp_path / "out"
    out.mkdir()
    worker_args = srun[srun.index("bash") + 1:]
    worker_args = [a if not a.startswith("--python=") else f"--python={stub}" for a in worker_args]
    for procid in ("0", "1"):
        result = subprocess.run(["bash", *worker_args], cwd=REPO, capture_output=True, text=True,
                                timeout=30, env=dict(os.environ, SLURM_PROCID=procid, STUB_OUT=str(out)))
        assert result.returncode == 0, result.stderr
    for index in (0, 1):
        record = json.loads((out / f"worker-{index}.json").read_text())
        assert record["tf_config"] == {"cluster": {"worker": ["node1:23456", "node2:23456"]},
                                       "task": {"type": "worker", "index": index}}
        assert record["argv"] == ["-m", "tfmeta.train", "--config=c", "--workdir=gs://b/r",
                                  "--strategy=multiworker"]


def test_slurm_rejects_bad_arguments():
    result = run_script("slurm.sbatch", "--dry_run", "--hosts=a,b", "--port=0", "--", "--config=c")
    assert result.returncode == 2 and "--port" in result.stderr
    env = {k: "" for k in ("SLURM_JOB_NODELIST",)}
    result = run_script("slurm.sbatch", "--dry_run", "--", "--config=c", env=env)
    assert result.returncode == 2 and "SLURM_JOB_NODELIST" in result.stderr
    result = run_script("slurm.sbatch", "--dry_run", "--hosts=a", "--config=c")
    assert result.returncode == 2 and "unknown option '--config=c'" in result.stderr
