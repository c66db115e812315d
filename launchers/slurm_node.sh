#!/usr/bin/env bash
# One node of launchers/slurm.sbatch: srun runs it once per node. It starts torchrun through
# multi_node.sh and exits with a status SLURM's batch script can act on.
#
#   srun --ntasks-per-node=1 bash launchers/slurm_node.sh script.py [args...]
#
# torchrun exits 1 when any worker fails, whatever the worker's status; each worker runs
# under record_exit.sh, and this script exits with DISTENGINE_PREEMPT_EXIT (75) when a local
# worker's last status was that one (the job stopped for preemption after writing its
# checkpoint), otherwise with torchrun's status. srun reports the highest status of its
# tasks, so one node reporting 75 while the others report 0 or 1 makes the step's status 75.
#
# Environment: NNODES, RDZV_ENDPOINT, RDZV_ID (set by slurm.sbatch), NODE_RANK (SLURM_NODEID
# when SLURM sets it), PYTHON (python) and multi_node.sh's optional variables. The script runs as
# `python -u script.py`, so torchrun options cannot go in the arguments: set them as
# PET_<OPTION> variables (e.g. PET_LOG_DIR=logs), which torchrun reads for its options.
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: srun bash launchers/slurm_node.sh script.py [args...]" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
preempt_exit=${DISTENGINE_PREEMPT_EXIT:-75}
# SLURM_NODEID first: a NODE_RANK exported in the submitting shell would be the same on every node.
export NODE_RANK=${SLURM_NODEID:-${NODE_RANK:-}}
status_dir=$(mktemp -d "${TMPDIR:-/tmp}/distengine-status.XXXXXX") || exit 1
trap 'rm -rf "$status_dir"' EXIT
# SLURM signals every process of the step, this shell included; it must outlive torchrun to
# report the workers' status (the trap runs once the foreground command has returned).
trap ':' TERM INT HUP QUIT USR1 USR2
DISTENGINE_STATUS_DIR=$status_dir bash "$here/multi_node.sh" \
  --no-python bash "$here/record_exit.sh" "${PYTHON:-python}" -u "$@"
status=$?
if grep -qsx -- "$preempt_exit" "$status_dir"/local_rank_*; then
  status=$preempt_exit
fi
exit "$status"
