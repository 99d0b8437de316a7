#!/usr/bin/env bash
# Train tfmeta on a Cloud TPU VM or TPU VM pod slice with TensorFlow.
#
# Process model (TensorFlow on a multi-host TPU VM slice, "-pod" runtimes):
#   every TPU VM host of the slice runs the TPU runtime server that the
#   `tpu-vm-tf-*-pod-*` software version starts at boot; the training program
#   runs once, on worker 0 only, as the single TensorFlow client. It finds the
#   servers through TPUClusterResolver(tpu=<TPU name>) (TPU_NAME) and must not
#   load libtpu itself (TPU_LOAD_LIBRARY=0), because the local server owns
#   worker 0's chips. This differs from JAX, which runs one process per host.
#   On a single-host TPU VM the program runs on that host with --tpu=local.
# See docs/scaling-out.md ("Cloud TPU VM and TPU pod slices") for sources.
set -euo pipefail

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/common.sh
source "${LAUNCH_DIR}/common.sh"

readonly TF_RUNTIME_VERSION="2.16.1"
# These expand on the TPU VMs, not here.
# shellcheck disable=SC2016
readonly REMOTE_LOG_DIR='$HOME/tfmeta_logs'
# shellcheck disable=SC2016
readonly REMOTE_TARBALL='$HOME/tfmeta-src.tar.gz'
# shellcheck disable=SC2016
readonly REMOTE_SRC_DIR='$HOME/tfmeta'

usage() {
  cat <<EOF
Usage: launch/tpu_pod.sh COMMAND --name=NAME --zone=ZONE [options] [-- training args...]

Commands:
  create    create the TPU VM / pod slice (directly, or as a queued resource)
  install   copy this checkout to ~/tfmeta on every worker and pip install it
            (or pip install --pip_spec)
  train     start training in the background on worker 0 (pod) or the VM,
            in ~/tfmeta (so relative --config paths work); then stream its
            log unless --no_follow
  logs      stream the training log; exits with the training's exit status
  stop      send SIGTERM to the training (it checkpoints and exits)
  delete    delete the slice (and its queued resource with --queued)
  all       create, install, train, logs; with --delete_at_end also delete
            (even when a step fails)

Options (pass the same ones to every command):
  --name=NAME               TPU name (lowercase letters, digits, '-')
  --zone=ZONE               e.g. us-central2-b
  --project=PROJECT         default: gcloud's configured project
  --accelerator_type=TYPE   default: v4-32 (16 chips, 4 hosts)
  --runtime_version=VER     TPU software version. Default:
                              tpu-vm-tf-${TF_RUNTIME_VERSION}-pod-pjrt  (multi-host slices)
                              tpu-vm-tf-${TF_RUNTIME_VERSION}-pjrt      (single host)
  --spot                    Spot capacity (may be preempted; training resumes
                            from the last checkpoint in --workdir)
  --reserved                use reserved capacity
  --queued                  create/delete through a queued resource
  --queued_resource_id=ID   default: NAME-qr
  --valid_until_duration=D  queued resource: give up after D (e.g. 6h)
  --num_workers=N           override the host count derived from the type
  --src=DIR                 checkout to install (default: this repository;
                            committed files only, via git archive)
  --pip_spec=SPEC           install SPEC instead, e.g.
                            'tfmeta @ git+https://github.com/ORG/tfmeta'
  --extras=LIST             pip extras, e.g. tpu (default: none: the TPU
                            software version already ships the matching
                            TensorFlow; replacing it can break the pod runtime)
  --python=PYTHON           interpreter on the TPU VMs (default: python3)
  --workdir=gs://B/P        training --workdir (required for train/all);
                            must be gs:// on multi-host slices
  --env=KEY=VALUE           environment for the training (repeatable), e.g.
                            --env=TFDS_DATA_DIR=gs://bucket/tfds
  --no_follow               train: do not stream the log
  --delete_at_end           all: delete the slice at the end
  --dry_run                 print the commands, run nothing
  -h, --help                this message

Example (v4-32, 4 hosts):
  launch/tpu_pod.sh all --name=maml-pod --zone=us-central2-b --spot \\
      --workdir=gs://my-bucket/omniglot_5way1shot \\
      --env=TFDS_DATA_DIR=gs://my-bucket/tfds --delete_at_end -- \\
      --config=configs/omniglot_maml.py:5way1shot
EOF
}

command=""
name=""
zone=""
project=""
accelerator_type="v4-32"
runtime_version=""
spot=0
reserved=0
queued=0
qr_id=""
valid_until_duration=""
num_workers=""
src_dir=""
pip_spec=""
extras=""
python_bin="python3"
workdir=""
follow=1
delete_at_end=0
declare -a extra_env=()
declare -a train_args=()

parse_args() {
  (($# > 0)) || die "missing COMMAND"
  case "$1" in
    -h | --help) usage; exit 0 ;;
    create | install | train | logs | stop | delete | all) command="$1" ;;
    *) die "unknown command '$1'" ;;
  esac
  shift
  while (($# > 0)); do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --dry_run) DRY_RUN=1 ;;
      --name=*) name="${1#*=}" ;;
      --zone=*) zone="${1#*=}" ;;
      --project=*) project="${1#*=}" ;;
      --accelerator_type=*) accelerator_type="${1#*=}" ;;
      --runtime_version=*) runtime_version="${1#*=}" ;;
      --spot) spot=1 ;;
      --reserved) reserved=1 ;;
      --queued) queued=1 ;;
      --queued_resource_id=*) qr_id="${1#*=}" ;;
      --valid_until_duration=*) valid_until_duration="${1#*=}" ;;
      --num_workers=*) num_workers="${1#*=}" ;;
      --src=*) src_dir="${1#*=}" ;;
      --pip_spec=*) pip_spec="${1#*=}" ;;
      --extras=*) extras="${1#*=}" ;;
      --python=*) python_bin="${1#*=}" ;;
      --workdir=*) workdir="${1#*=}" ;;
      --env=*) check_env_assignment "${1#*=}"; extra_env+=("${1#*=}") ;;
      --no_follow) follow=0 ;;
      --delete_at_end) delete_at_end=1 ;;
      --)
        shift
        train_args=("$@")
        break
        ;;
      *) die "unknown option '$1' (training arguments go after --)" ;;
    esac
    shift
  done
}

# chips_and_hosts TYPE: prints "CHIPS HOSTS" for a Cloud TPU accelerator type.
# v2/v3/v4/v5p count TensorCores (2 per chip); v2/v3 hosts have 4 chips,
# v4/v5p hosts 4 chips; v5e (v5litepod) and v6e count chips, 4 per host in
# multi-host slices, up to 8 on a single host.
chips_and_hosts() {
  local type="$1" family count chips hosts
  [[ "${type}" =~ ^(v2|v3|v4|v5p|v5litepod|v5e|v6e)-([0-9]+)$ ]] || return 1
  family="${BASH_REMATCH[1]}"
  count="${BASH_REMATCH[2]}"
  ((count > 0)) || return 1
  case "${family}" in
    v2 | v3 | v4 | v5p)
      ((count % 2 == 0)) || return 1
      chips=$((count / 2))
      hosts=$(((chips + 3) / 4))
      ;;
    v5litepod | v5e | v6e)
      chips="${count}"
      if ((chips <= 8)); then hosts=1; else hosts=$((chips / 4)); fi
      ;;
  esac
  printf '%d %d' "${chips}" "${hosts}"
}

validate_args() {
  [[ -n "${name}" ]] || die "missing --name"
  [[ "${name}" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "--name: use lowercase letters, digits and '-', starting with a letter; got '${name}'"
  [[ -n "${zone}" ]] || die "missing --zone"
  [[ "${zone}" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone: malformed zone '${zone}' (e.g. us-central2-b)"
  if [[ -n "${project}" && ! "${project}" =~ ^[a-z][-a-z0-9:.]{4,}[a-z0-9]$ ]]; then
    die "--project: malformed project id '${project}'"
  fi
  local info
  info="$(chips_and_hosts "${accelerator_type}")" ||
    die "--accelerator_type: unknown or malformed type '${accelerator_type}' (e.g. v4-32, v5litepod-16)"
  read -r CHIPS HOSTS <<<"${info}"
  if [[ -n "${num_workers}" ]]; then
    if ! is_uint "${num_workers}" || ((num_workers < 1)); then
      die "--num_workers must be a positive integer, got '${num_workers}'"
    fi
    HOSTS="${num_workers}"
  fi
  if [[ -z "${runtime_version}" ]]; then
    if ((HOSTS > 1)); then
      runtime_version="tpu-vm-tf-${TF_RUNTIME_VERSION}-pod-pjrt"
    else
      runtime_version="tpu-vm-tf-${TF_RUNTIME_VERSION}-pjrt"
    fi
  fi
  [[ "${runtime_version}" =~ ^[a-z0-9][a-z0-9.-]*$ ]] || die "--runtime_version: malformed '${runtime_version}'"
  if [[ "${runtime_version}" == tpu-vm-tf-* ]]; then
    if ((HOSTS > 1)) && [[ "${runtime_version}" != *-pod* ]]; then
      die "--runtime_version '${runtime_version}' is a single-host version but ${accelerator_type} has ${HOSTS} hosts; use a -pod version such as tpu-vm-tf-${TF_RUNTIME_VERSION}-pod-pjrt"
    fi
    if ((HOSTS == 1)) && [[ "${runtime_version}" == *-pod* ]]; then
      die "--runtime_version '${runtime_version}' is for multi-host slices but ${accelerator_type} has 1 host; use tpu-vm-tf-${TF_RUNTIME_VERSION}-pjrt"
    fi
  fi
  [[ -n "${qr_id}" ]] || qr_id="${name}-qr"
  [[ "${qr_id}" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--queued_resource_id: malformed '${qr_id}'"
  if [[ -n "${valid_until_duration}" && ! "${valid_until_duration}" =~ ^[0-9]+[smhd]$ ]]; then
    die "--valid_until_duration: expected e.g. 30m, 6h or 2d, got '${valid_until_duration}'"
  fi
  [[ "${extras}" =~ ^([a-z]+(,[a-z]+)*)?$ ]] || die "--extras: expected a comma-separated list such as tpu, got '${extras}'"
  if [[ -n "${pip_spec}" && -n "${src_dir}" ]]; then
    die "give either --src or --pip_spec, not both"
  fi
  [[ -n "${src_dir}" ]] || src_dir="$(cd "${LAUNCH_DIR}/.." && pwd)"
  [[ -n "${python_bin}" ]] || die "--python is empty"

  case "${command}" in
    train | all)
      [[ -n "${workdir}" ]] || die "missing --workdir (a gs:// path; every run's checkpoints and summaries go there)"
      if ((HOSTS > 1)) && [[ "${workdir}" != gs://?* ]]; then
        die "--workdir must be a gs:// path on a multi-host slice, got '${workdir}'"
      fi
      ((${#train_args[@]} > 0)) || die "no training arguments after -- (need at least --config)"
      check_train_args "${train_args[@]}"
      local arg
      for arg in "${train_args[@]}"; do
        case "${arg}" in
          --workdir | --workdir=*) die "training argument '${arg}': give the work directory as the launcher's --workdir" ;;
        esac
      done
      ;;
    *)
      ((${#train_args[@]} == 0)) || die "'${command}' takes no training arguments"
      ;;
  esac
}

# gcloud_tpu ARG...: gcloud compute tpus ARG... with zone and project.
gcloud_tpu() {
  local -a argv=(gcloud compute tpus "$@" "--zone=${zone}")
  [[ -z "${project}" ]] || argv+=("--project=${project}")
  run "${argv[@]}"
}

# tpu_ssh WORKER REMOTE_COMMAND
tpu_ssh() {
  gcloud_tpu tpu-vm ssh "${name}" "--worker=$1" "--command=$2"
}

describe_layout() {
  show "${accelerator_type}: ${CHIPS} chips on ${HOSTS} TPU VM host(s) (workers 0-$((HOSTS - 1))), zone ${zone}, software version ${runtime_version}"
  if ((HOSTS > 1)); then
    show "worker 0: the TensorFlow client: ${python_bin} -m tfmeta.train --strategy=tpu --tpu=${name} with TPU_NAME=${name} TPU_LOAD_LIBRARY=0"
    local i
    for ((i = 1; i < HOSTS; i++)); do
      show "worker ${i}: TPU runtime server only (started by the -pod software version); no tfmeta process"
    done
  else
    show "worker 0: ${python_bin} -m tfmeta.train --strategy=tpu --tpu=local"
  fi
}

cmd_create() {
  local -a capacity=()
  ((spot == 0)) || capacity+=(--spot)
  ((reserved == 0)) || capacity+=(--reserved)
  if ((queued)); then
    local -a extra=()
    [[ -z "${valid_until_duration}" ]] || extra+=("--valid-until-duration=${valid_until_duration}")
    gcloud_tpu queued-resources create "${qr_id}" "--node-id=${name}" \
      "--accelerator-type=${accelerator_type}" "--runtime-version=${runtime_version}" \
      "${capacity[@]}" "${extra[@]}"
    wait_for_queued_resource
  else
    gcloud_tpu tpu-vm create "${name}" "--accelerator-type=${accelerator_type}" \
      "--version=${runtime_version}" "${capacity[@]}"
  fi
}

wait_for_queued_resource() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    show "repeat every 30 s until the state is ACTIVE (fail on FAILED or SUSPENDED):"
    gcloud_tpu queued-resources describe "${qr_id}" '--format=value(state.state)'
    return 0
  fi
  local state
  while true; do
    state="$(gcloud_tpu queued-resources describe "${qr_id}" '--format=value(state.state)')"
    log "queued resource ${qr_id}: ${state}"
    case "${state}" in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDED) fail "queued resource ${qr_id} is ${state}" ;;
    esac
    sleep 30
  done
}

# The import check must not grab the TPU on pod workers, whose chips belong to
# the TPU runtime server.
import_check_env() {
  if ((HOSTS > 1)); then printf 'TPU_LOAD_LIBRARY=0 '; fi
}

cmd_install() {
  local pip_target remote=""
  if [[ -n "${pip_spec}" ]]; then
    pip_target="$(shell_quote "${pip_spec}")"
    if [[ -n "${extras}" ]]; then
      show "--extras is ignored with --pip_spec; put the extras into the spec"
    fi
  else
    local tarball="${TMPDIR:-/tmp}/tfmeta-src-${name}.tar.gz"
    if [[ "${DRY_RUN}" != 1 ]]; then
      git -C "${src_dir}" rev-parse --git-dir >/dev/null 2>&1 || fail "--src '${src_dir}' is not a git checkout"
      if [[ -n "$(git -C "${src_dir}" status --porcelain --untracked-files=no)" ]]; then
        log "warning: ${src_dir} has uncommitted changes; only committed files are installed"
      fi
    fi
    run git -C "${src_dir}" archive --format=tar.gz --prefix=tfmeta/ "--output=${tarball}" HEAD
    gcloud_tpu tpu-vm scp "${tarball}" "${name}:tfmeta-src.tar.gz" --worker=all
    # Unpacked to ~/tfmeta: the training runs there, so configs/ resolves.
    remote="rm -rf \"${REMOTE_SRC_DIR}\" && tar -xzf \"${REMOTE_TARBALL}\" -C \"\$HOME\" && "
    pip_target="\"${REMOTE_SRC_DIR}${extras:+[${extras}]}\""
  fi
  remote+="$(shell_quote "${python_bin}") -m pip install ${pip_target}"
  remote+=" && $(import_check_env)$(shell_quote "${python_bin}") -c 'import tfmeta, tensorflow as tf; print(\"tfmeta installed; TensorFlow\", tf.__version__)'"
  tpu_ssh all "${remote}"
}

# The command that runs the training program (on worker 0).
training_argv() {
  TRAIN_ARGV=(env)
  if ((HOSTS > 1)); then
    TRAIN_ARGV+=("TPU_NAME=${name}" TPU_LOAD_LIBRARY=0)
  elif [[ "${runtime_version}" == *pjrt* ]]; then
    TRAIN_ARGV+=(NEXT_PLUGGABLE_DEVICE_USE_C_API=true TF_PLUGGABLE_DEVICE_LIBRARY_PATH=/lib/libtpu.so)
  fi
  TRAIN_ARGV+=("${extra_env[@]}" "${python_bin}" -m tfmeta.train "${train_args[@]}" "--workdir=${workdir}" --strategy=tpu)
  if ((HOSTS > 1)); then
    TRAIN_ARGV+=("--tpu=${name}")
  else
    TRAIN_ARGV+=(--tpu=local)
  fi
}

cmd_train() {
  training_argv
  local d="${REMOTE_LOG_DIR}"
  local inner remote
  inner="$(shell_quote "${TRAIN_ARGV[@]}"); echo \$? > \"${d}/train.exit\""
  remote="mkdir -p \"${d}\""
  remote+=" && if [ -f \"${d}/train.pid\" ] && kill -0 \"\$(cat \"${d}/train.pid\")\" 2>/dev/null; then echo 'tfmeta training is already running' >&2; exit 1; fi"
  remote+=" && rm -f \"${d}/train.exit\""
  remote+=" && { cd \"${REMOTE_SRC_DIR}\" 2>/dev/null || cd \"\$HOME\"; }"
  remote+=" && { setsid nohup bash -c $(shell_quote "${inner}") > \"${d}/train.log\" 2>&1 < /dev/null & echo \$! > \"${d}/train.pid\"; }"
  remote+=" && echo \"training started on \$(hostname), log ${d}/train.log\""
  tpu_ssh 0 "${remote}"
  if ((follow)); then
    cmd_logs
  fi
}

cmd_logs() {
  local d="${REMOTE_LOG_DIR}"
  local remote="tail -n +1 --pid=\"\$(cat \"${d}/train.pid\")\" -F \"${d}/train.log\""
  remote+="; exit \"\$(cat \"${d}/train.exit\" 2>/dev/null || echo 1)\""
  tpu_ssh 0 "${remote}"
}

cmd_stop() {
  local d="${REMOTE_LOG_DIR}"
  tpu_ssh 0 "kill -TERM -- \"-\$(cat \"${d}/train.pid\")\""
}

cmd_delete() {
  if ((queued)); then
    gcloud_tpu queued-resources delete "${qr_id}" --force --quiet
  else
    gcloud_tpu tpu-vm delete "${name}" --quiet
  fi
}

cmd_all() {
  if ((delete_at_end)) && [[ "${DRY_RUN}" != 1 ]]; then
    trap 'status=$?; log "deleting ${name}"; cmd_delete || true; exit "${status}"' EXIT
  fi
  cmd_create
  cmd_install
  follow=1
  cmd_train
  if ((delete_at_end)) && [[ "${DRY_RUN}" == 1 ]]; then
    cmd_delete
  fi
}

main() {
  parse_args "$@"
  validate_args
  describe_layout
  "cmd_${command}"
}

main "$@"
