# shellcheck shell=bash
# Functions shared by the launch scripts. Source this file; do not execute it.
#
# Conventions used by every launcher:
#   * options are `--name=value` (absl style); booleans are bare `--name`;
#   * `--dry_run` prints each command, one per line, shell-quoted exactly as it
#     would be executed, and executes nothing;
#   * bad or missing arguments print the usage and exit with status 2.

if [[ -n "${TFMETA_LAUNCH_COMMON_LOADED:-}" ]]; then
  return 0
fi
TFMETA_LAUNCH_COMMON_LOADED=1

DRY_RUN="${DRY_RUN:-0}"

log() {
  printf '[%s] %s\n' "${0##*/}" "$*" >&2
}

# die MESSAGE: report a bad invocation, show the usage and exit 2.
# The calling script must define usage().
die() {
  printf '%s: error: %s\n' "${0##*/}" "$*" >&2
  if declare -F usage >/dev/null; then
    usage >&2
  fi
  exit 2
}

# fail MESSAGE: a runtime failure (not a usage error).
fail() {
  printf '%s: error: %s\n' "${0##*/}" "$*" >&2
  exit 1
}

# shell_quote ARG...: print the arguments as one line of shell that, when
# evaluated, yields exactly these arguments. Plain words stay unquoted so the
# dry-run output is readable.
shell_quote() {
  local out="" arg
  for arg in "$@"; do
    if [[ -n "${arg}" && "${arg}" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+="${arg} "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  printf '%s' "${out% }"
}

# run ARG...: execute a command, or print it under --dry_run.
run() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    printf '%s\n' "$(shell_quote "$@")"
  else
    log "+ $(shell_quote "$@")"
    "$@"
  fi
}

# show TEXT: a line of dry-run output that is not itself a command (a comment).
show() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    printf '# %s\n' "$*"
  else
    log "$*"
  fi
}

is_uint() {
  [[ "$1" =~ ^[0-9]+$ ]]
}

is_port() {
  is_uint "$1" && (("$1" >= 1 && "$1" <= 65535))
}

# is_host NAME: a DNS name or IPv4 address (no user@, no port).
is_host() {
  [[ "$1" =~ ^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$ ]]
}

# split_csv CSV ARRAY_NAME: split a comma-separated list into an array.
split_csv() {
  local -n _out="$2"
  IFS=',' read -r -a _out <<<"$1"
}

# tf_config_json WORKERS_CSV INDEX: the TF_CONFIG for worker INDEX of a
# MultiWorkerMirroredStrategy cluster whose workers are WORKERS_CSV
# ("host:port,host:port,..."). Every worker lists the full cluster, in the
# same order; only task.index differs.
tf_config_json() {
  local workers_csv="$1" index="$2" w list=""
  local -a workers
  split_csv "${workers_csv}" workers
  ((${#workers[@]} > 0)) || fail "tf_config_json: empty worker list"
  is_uint "${index}" || fail "tf_config_json: bad index '${index}'"
  ((index < ${#workers[@]})) || fail "tf_config_json: index ${index} out of range"
  for w in "${workers[@]}"; do
    [[ "${w}" =~ ^[A-Za-z0-9._-]+:[0-9]+$ ]] || fail "tf_config_json: bad worker address '${w}'"
    list+="${list:+, }\"${w}\""
  done
  printf '{"cluster": {"worker": [%s]}, "task": {"type": "worker", "index": %d}}' \
    "${list}" "${index}"
}

# check_train_args ARG...: the launcher owns --strategy (and --tpu); refuse
# them in the pass-through training arguments.
check_train_args() {
  local arg
  for arg in "$@"; do
    case "${arg}" in
      --strategy | --strategy=* | --tpu | --tpu=*)
        die "training argument '${arg}' is set by the launcher; remove it"
        ;;
    esac
  done
}

# check_env_assignment KEY=VALUE
check_env_assignment() {
  [[ "$1" =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || die "--env expects KEY=VALUE, got '$1'"
}

# free_ports N: print N distinct currently free TCP ports on localhost.
free_ports() {
  local n="$1"
  "${PYTHON:-python3}" - "${n}" <<'PY'
import socket, sys
n = int(sys.argv[1])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("localhost", 0))
    socks.append(s)
print(",".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

# supervise STOP_FN PID...: wait for all worker processes (children of this
# shell). When one exits non-zero, call `STOP_FN INDEX` for every worker still
# running, terminate their local processes and return that worker's status.
# Returns 0 when every worker exits 0.
supervise() {
  local stop_fn="$1"
  shift
  local -a pids=("$@")
  local -a running=("${!pids[@]}")
  local i status failed_status=0
  while ((${#running[@]} > 0)); do
    local -a still=()
    for i in "${running[@]}"; do
      if kill -0 "${pids[i]}" 2>/dev/null; then
        still+=("${i}")
        continue
      fi
      status=0
      wait "${pids[i]}" || status=$?
      if ((status == 0)); then
        log "worker ${i} finished"
      elif ((failed_status == 0)); then
        log "worker ${i} failed with exit status ${status}; stopping the others"
        failed_status="${status}"
      fi
    done
    running=("${still[@]}")
    if ((failed_status != 0)); then
      for i in "${running[@]}"; do
        "${stop_fn}" "${i}" || true
        kill -TERM "${pids[i]}" 2>/dev/null || true
      done
      for i in "${running[@]}"; do
        wait "${pids[i]}" 2>/dev/null || true
      done
      return "${failed_status}"
    fi
    ((${#running[@]} == 0)) || sleep 0.5
  done
  return 0
}
