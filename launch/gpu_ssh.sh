#!/usr/bin/env bash
# Multi-host GPU training over SSH: one MultiWorkerMirroredStrategy worker per
# host, each with a TF_CONFIG listing every worker and its own task index.
# Logs go to one local file per worker. If a worker fails, the others are
# stopped (their remote processes are killed) and the script exits non-zero.
set -euo pipefail

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/common.sh
source "${LAUNCH_DIR}/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/gpu_ssh.sh --hosts=H1,H2,... --port=PORT [options] -- [training args...]

Runs `PYTHON -m tfmeta.train [training args...] --strategy=multiworker` on every
host over SSH. Host i is worker i; all workers use PORT for the TF gRPC server.
tfmeta must already be installed on every host (pip install ".[gpu]").

Required:
  --hosts=H1,H2,...    host names or IPs, as the workers reach each other
  --port=PORT          TF worker port (the same on every host)

Options:
  --dry_run            print the commands, run nothing
  --ssh_user=USER      log in as USER@host
  --ssh_opt=OPT        extra ssh option, e.g. --ssh_opt=-p2222 (repeatable;
                       default options: -o BatchMode=yes)
  --ssh=PROGRAM        ssh client (default: ssh)
  --python=PYTHON      remote interpreter (default: python3), e.g. /opt/venv/bin/python
  --remote_dir=DIR     cd into DIR on every host before starting
  --env=KEY=VALUE      extra environment for every worker (repeatable), e.g.
                       --env=TFDS_DATA_DIR=gs://bucket/tfds
  --log_dir=DIR        local per-worker logs DIR/worker-<i>.log
                       (default: ./tfmeta_logs/gpu_ssh-<timestamp>)
  --run_id=ID          names the remote pid files (default: timestamp)
  -h, --help           this message

Example:
  launch/gpu_ssh.sh --hosts=gpu1,gpu2 --port=12345 -- \
      --config=configs/omniglot_maml.py:5way1shot --workdir=gs://bucket/run1
EOF
}

hosts_csv=""
port=""
ssh_user=""
ssh_prog="ssh"
python_bin="python3"
remote_dir=""
log_dir=""
run_id=""
declare -a ssh_opts=()
declare -a extra_env=()
declare -a train_args=()
declare -a hosts=()

parse_args() {
  local saw_separator=0
  while (($# > 0)); do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --dry_run) DRY_RUN=1 ;;
      --hosts=*) hosts_csv="${1#*=}" ;;
      --port=*) port="${1#*=}" ;;
      --ssh_user=*) ssh_user="${1#*=}" ;;
      --ssh_opt=*) ssh_opts+=("${1#*=}") ;;
      --ssh=*) ssh_prog="${1#*=}" ;;
      --python=*) python_bin="${1#*=}" ;;
      --remote_dir=*) remote_dir="${1#*=}" ;;
      --env=*) check_env_assignment "${1#*=}"; extra_env+=("${1#*=}") ;;
      --log_dir=*) log_dir="${1#*=}" ;;
      --run_id=*) run_id="${1#*=}" ;;
      --)
        shift
        train_args=("$@")
        saw_separator=1
        break
        ;;
      *) die "unknown option '$1' (training arguments go after --)" ;;
    esac
    shift
  done
  ((saw_separator)) || die "missing '--' before the training arguments"
}

validate_args() {
  [[ -n "${hosts_csv}" ]] || die "missing --hosts"
  split_csv "${hosts_csv}" hosts
  ((${#hosts[@]} > 0)) || die "--hosts is empty"
  local h
  for h in "${hosts[@]}"; do
    is_host "${h}" || die "--hosts: bad host name '${h}' (give plain host names; use --ssh_user for the login)"
  done
  [[ -n "${port}" ]] || die "missing --port"
  is_port "${port}" || die "--port must be 1..65535, got '${port}'"
  if [[ -n "${ssh_user}" && ! "${ssh_user}" =~ ^[A-Za-z0-9._-]+$ ]]; then
    die "--ssh_user: bad user name '${ssh_user}'"
  fi
  [[ -n "${python_bin}" ]] || die "--python is empty"
  if [[ -n "${run_id}" && ! "${run_id}" =~ ^[A-Za-z0-9._-]+$ ]]; then
    die "--run_id: use letters, digits, '.', '_' or '-', got '${run_id}'"
  fi
  ((${#train_args[@]} > 0)) || die "no training arguments after -- (need at least --config and --workdir)"
  check_train_args "${train_args[@]}"
}

worker_addresses() {
  local out="" h
  for h in "${hosts[@]}"; do
    out+="${out:+,}${h}:${port}"
  done
  printf '%s' "${out}"
}

remote_pid_file() {
  printf '/tmp/tfmeta-%s-worker-%d.pid' "${run_id}" "$1"
}

ssh_destination() {
  local h="${hosts[$1]}"
  if [[ -n "${ssh_user}" ]]; then
    printf '%s@%s' "${ssh_user}" "${h}"
  else
    printf '%s' "${h}"
  fi
}

# remote_command INDEX WORKERS_CSV: the shell command run on host INDEX. It
# records its pid (the exec keeps the pid) so a failing run can stop it.
remote_command() {
  local index="$1" workers="$2" prefix=""
  if [[ -n "${remote_dir}" ]]; then
    prefix="cd $(shell_quote "${remote_dir}") && "
  fi
  local -a argv=(env "TF_CONFIG=$(tf_config_json "${workers}" "${index}")" "${extra_env[@]}"
    "${python_bin}" -m tfmeta.train "${train_args[@]}" --strategy=multiworker)
  printf '%secho $$ > %s && exec %s' "${prefix}" "$(remote_pid_file "${index}")" "$(shell_quote "${argv[@]}")"
}

# ssh_argv INDEX REMOTE_COMMAND: into SSH_ARGV.
ssh_argv() {
  SSH_ARGV=("${ssh_prog}" "${ssh_opts[@]}" "$(ssh_destination "$1")" "$2")
}

# stop_worker INDEX: kill the remote process of worker INDEX.
stop_worker() {
  local index="$1"
  local pid_file
  pid_file="$(remote_pid_file "${index}")"
  ssh_argv "${index}" "test -f ${pid_file} && kill -TERM \"\$(cat ${pid_file})\"; rm -f ${pid_file}"
  log "stopping worker ${index} on ${hosts[index]}"
  "${SSH_ARGV[@]}" </dev/null >/dev/null 2>&1 || true
}

main() {
  parse_args "$@"
  validate_args
  if ((${#ssh_opts[@]} == 0)); then
    ssh_opts=(-o BatchMode=yes)
  fi
  [[ -n "${run_id}" ]] || run_id="$(date +%Y%m%d-%H%M%S)-$$"
  [[ -n "${log_dir}" ]] || log_dir="tfmeta_logs/gpu_ssh-${run_id}"

  local workers i
  workers="$(worker_addresses)"
  show "cluster: ${#hosts[@]} workers: ${workers}"
  run mkdir -p "${log_dir}"

  declare -a pids=()
  for ((i = 0; i < ${#hosts[@]}; i++)); do
    ssh_argv "${i}" "$(remote_command "${i}" "${workers}")"
    local logfile="${log_dir}/worker-${i}.log"
    if [[ "${DRY_RUN}" == 1 ]]; then
      printf '%s < /dev/null > %s 2>&1 &\n' "$(shell_quote "${SSH_ARGV[@]}")" "$(shell_quote "${logfile}")"
      continue
    fi
    log "worker ${i} on ${hosts[i]} -> ${logfile}"
    "${SSH_ARGV[@]}" </dev/null >"${logfile}" 2>&1 &
    pids+=("$!")
  done
  if [[ "${DRY_RUN}" == 1 ]]; then
    printf 'wait\n'
    return 0
  fi

  trap 'log "interrupted; stopping workers"; for i in "${!hosts[@]}"; do stop_worker "${i}"; done; kill -TERM "${pids[@]}" 2>/dev/null || true; exit 130' INT TERM
  local status=0
  supervise stop_worker "${pids[@]}" || status=$?
  trap - INT TERM
  if ((status != 0)); then
    log "FAILED (exit status ${status}); logs in ${log_dir}/"
    return "${status}"
  fi
  log "all ${#hosts[@]} workers finished; logs in ${log_dir}/"
}

main "$@"
