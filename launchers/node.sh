#!/usr/bin/env bash
# One node under a scheduler that restarts a job by its exit status (Kubernetes: Kubeflow
# PyTorchJob, JobSet; SkyPilot; SLURM through slurm_node.sh). It runs torchrun with every
# worker under record_exit.sh and exits with DISTENGINE_PREEMPT_EXIT when a worker stopped
# for preemption after writing its checkpoint: torchrun itself exits 1 whenever a worker
# fails, whatever the worker's status, so the scheduler would otherwise never see it.
#
#   bash launchers/node.sh MODE script.py [args...]
#
#   MODE torchrun    torchrun reads its options from PET_* variables: Kubeflow's PyTorchJob
#                    sets PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, PET_MASTER_ADDR and
#                    PET_MASTER_PORT in every pod
#   MODE multi_node  multi_node.sh: NNODES, NODE_RANK, RDZV_ENDPOINT (JobSet, SkyPilot, SLURM)
#   MODE elastic     elastic.sh: NNODES=MIN:MAX, NPROC_PER_NODE, RDZV_ENDPOINT
#
# Exit status: DISTENGINE_PREEMPT_EXIT (75) when a local worker's last status was that one
# (map it to "restart, do not count" in the scheduler), else torchrun's (0, or 1 for a
# failure the job could not recover from within its own restarts).
#
# Signals: SIGTERM, SIGINT, SIGHUP, SIGQUIT and SIGUSR1 are passed on to torchrun, which
# passes them to the workers (SIGUSR1 through PET_SIGNALS_TO_HANDLE, see common.sh). In a
# container this shell is PID 1 (or the only child of an init such as tini), the one
# process Kubernetes signals when a pod is deleted or evicted. A scheduler that signals
# every process of the job itself (SLURM's scancel) sets DISTENGINE_FORWARD_SIGNALS=0; a
# signal torchrun gets twice is harmless (measured: it still waits for its workers).
#
# Environment: DISTENGINE_PREEMPT_EXIT (75), DISTENGINE_FORWARD_SIGNALS (1), PYTHON
# (python), and the chosen launcher's variables. The script runs as `python -u script.py`,
# so torchrun options cannot go in the arguments: set them as PET_<OPTION> variables.
set -uo pipefail
usage="usage: bash launchers/node.sh torchrun|multi_node|elastic script.py [args...]"
if [ $# -lt 2 ]; then
  echo "$usage" >&2
  exit 2
fi
mode=$1
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launchers/common.sh
source "$here/common.sh"
preempt_exit=${DISTENGINE_PREEMPT_EXIT:-75}
distengine_require_uint DISTENGINE_PREEMPT_EXIT "$preempt_exit"
forward_signals=${DISTENGINE_FORWARD_SIGNALS:-1}
if [ "$forward_signals" != 1 ] && [ "$forward_signals" != 0 ]; then
  echo "error: DISTENGINE_FORWARD_SIGNALS must be 1 or 0, got '$forward_signals'" >&2
  exit 2
fi
case "$mode" in
  torchrun) launcher=(torchrun) ;;
  multi_node) launcher=(bash "$here/multi_node.sh") ;;
  elastic)
    if [ -z "${NNODES:-}" ]; then
      echo "error: node.sh elastic needs NNODES=MIN:MAX in the environment" >&2
      exit 2
    fi
    launcher=(bash "$here/elastic.sh" "$NNODES" "$(distengine_default_nproc)")
    ;;
  *)
    echo "error: MODE must be torchrun, multi_node or elastic, got '$mode'" >&2
    echo "$usage" >&2
    exit 2
    ;;
esac
status_dir=$(mktemp -d "${TMPDIR:-/tmp}/distengine-status.XXXXXX") || exit 1
trap 'rm -rf "$status_dir"' EXIT
DISTENGINE_STATUS_DIR=$status_dir "${launcher[@]}" \
  --no-python bash "$here/record_exit.sh" "${PYTHON:-python}" -u "$@" &
agent=$!
forward() {
  kill -s "$1" "$agent" 2>/dev/null || true
}
if [ "$forward_signals" = 1 ]; then
  for sig in TERM INT HUP QUIT USR1; do
    # shellcheck disable=SC2064  # the signal name is meant to be expanded now
    trap "forward $sig" "$sig"
  done
else
  trap ':' TERM INT HUP QUIT USR1 # the scheduler signals torchrun itself; outlive it
fi
# A trapped signal interrupts `wait` (status > 128); keep waiting until torchrun has ended.
while :; do
  wait "$agent"
  status=$?
  kill -0 "$agent" 2>/dev/null || break
done
if grep -qsx -- "$preempt_exit" "$status_dir"/local_rank_*; then
  status=$preempt_exit
fi
exit "$status"
