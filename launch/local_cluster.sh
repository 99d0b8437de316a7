#!/usr/bin/env bash
# Start N MultiWorkerMirroredStrategy workers on this machine, each with its
# own TF_CONFIG (the same TF_CONFIG construction as gpu_ssh.sh), wait for all
# of them, and exit non-zero (stopping the others) as soon as one fails.
set -euo pipefail

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/common.sh
source "${LAUNCH_DIR}/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/local_cluster.sh [options] N [training args...]

Starts N workers of `python -m tfmeta.train ... --strategy=multiworker` on
localhost, worker i with TF_CONFIG task index i and the full cluster list.

Options (before N):
  --dry_run            print the commands, run nothing
  --log_dir=DIR        per-worker logs DIR/worker-<i>.log
                       (default: ./tfmeta_logs/local-<timestamp>)
  --base_port=P        use ports P..P+N-1 (default: pick free ports)
  --python=PYTHON      interpreter (default: $PYTHON, else the checkout's .venv/bin/python
                       if it exists, else python3)
  --cmd=PROGRAM        run PROGRAM [training args...] instead of
                       `PYTHON -m tfmeta.train` (used by tests)
  --env=KEY=VALUE      extra environment for every worker (repeatable)
  -h, --help           this message

Everything after N is passed to every worker, followed by --strategy=multiworker.
Example:
  launch/local_cluster.sh 2 --config=configs/omniglot_maml.py:smoke --workdir=/tmp/run
EOF
}

num_workers=""
log_dir=""
base_port=""
# The README's set-up command installs tfmeta into the checkout's .venv: use it when present.
repo_venv_python="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python"
if [[ -z "${PYTHON:-}" && -x "${repo_venv_python}" ]]; then
  python_bin="${repo_venv_python}"
else
  python_bin="${PYTHON:-python3}"
fi
cmd=""
declare -a extra_env=()
declare -a train_args=()

parse_args() {
  while (($# > 0)); do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --dry_run) DRY_RUN=1 ;;
      --log_dir=*)
        log_dir="${1#*=}"
        [[ -n "${log_dir}" ]] || die "--log_dir is empty"
        ;;
      --base_port=*) base_port="${1#*=}" ;;
      --python=*) python_bin="${1#*=}" ;;
      --cmd=*) cmd="${1#*=}" ;;
      --env=*) check_env_assignment "${1#*=}"; extra_env+=("${1#*=}") ;;
      -*) die "unknown option '$1'" ;;
      *)
        num_workers="$1"
        shift
        train_args=("$@")
        return 0
        ;;
    esac
    shift
  done
}

validate_args() {
  [[ -n "${num_workers}" ]] || die "missing N (number of workers)"
  if ! is_uint "${num_workers}" || ((num_workers < 1)); then
    die "N must be a positive integer, got '${num_workers}'"
  fi
  if [[ -n "${base_port}" ]]; then
    if ! is_port "${base_port}" || ((base_port + num_workers - 1 > 65535)); then
      die "--base_port must be a port number, got '${base_port}'"
    fi
  fi
  check_train_args "${train_args[@]}"
}

# worker_addresses: "localhost:p0,localhost:p1,..."
worker_addresses() {
  local ports_csv i
  local -a ports
  if [[ -n "${base_port}" ]]; then
    ports=()
    for ((i = 0; i < num_workers; i++)); do
      ports+=("$((base_port + i))")
    done
  else
    ports_csv="$(PYTHON="${python_bin}" free_ports "${num_workers}")"
    split_csv "${ports_csv}" ports
  fi
  local out=""
  for i in "${ports[@]}"; do
    out+="${out:+,}localhost:${i}"
  done
  printf '%s' "${out}"
}

# worker_command INDEX WORKERS_CSV: the argv of worker INDEX, into WORKER_ARGV.
worker_command() {
  local index="$1" workers="$2"
  WORKER_ARGV=(env "TF_CONFIG=$(tf_config_json "${workers}" "${index}")" "${extra_env[@]}")
  if [[ -n "${cmd}" ]]; then
    WORKER_ARGV+=("${cmd}")
  else
    WORKER_ARGV+=("${python_bin}" -m tfmeta.train)
  fi
  WORKER_ARGV+=("${train_args[@]}" --strategy=multiworker)
}

no_remote_stop() {
  return 0
}

main() {
  parse_args "$@"
  validate_args
  if [[ -z "${log_dir}" ]]; then
    log_dir="tfmeta_logs/local-$(date +%Y%m%d-%H%M%S)"
  fi

  local workers i
  workers="$(worker_addresses)"
  show "local cluster: ${num_workers} workers: ${workers}"
  run mkdir -p "${log_dir}"

  declare -a pids=()
  for ((i = 0; i < num_workers; i++)); do
    worker_command "${i}" "${workers}"
    local logfile="${log_dir}/worker-${i}.log"
    if [[ "${DRY_RUN}" == 1 ]]; then
      printf '%s > %s 2>&1 &\n' "$(shell_quote "${WORKER_ARGV[@]}")" "$(shell_quote "${logfile}")"
      continue
    fi
    log "worker ${i}: $(shell_quote "${WORKER_ARGV[@]}") > ${logfile}"
    "${WORKER_ARGV[@]}" >"${logfile}" 2>&1 &
    pids+=("$!")
  done
  if [[ "${DRY_RUN}" == 1 ]]; then
    printf 'wait\n'
    return 0
  fi

  trap 'log "interrupted; stopping workers"; kill -TERM "${pids[@]}" 2>/dev/null || true; exit 130' INT TERM
  local status=0
  supervise no_remote_stop "${pids[@]}" || status=$?
  trap - INT TERM
  if ((status != 0)); then
    log "FAILED (exit status ${status}); logs in ${log_dir}/"
    for ((i = 0; i < num_workers; i++)); do
      log "--- tail of ${log_dir}/worker-${i}.log"
      tail -n 5 "${log_dir}/worker-${i}.log" >&2 || true
    done
    return "${status}"
  fi
  log "all ${num_workers} workers finished; logs in ${log_dir}/"
}

main "$@"
