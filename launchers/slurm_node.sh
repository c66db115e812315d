#!/usr/bin/env bash
# One node of launchers/slurm.sbatch: srun runs it once per node. It runs node.sh in
# multi_node mode: torchrun through multi_node.sh, each worker under record_exit.sh, and an
# exit status SLURM's batch script can act on.
#
#   srun --ntasks-per-node=1 bash launchers/slurm_node.sh script.py [args...]
#
# torchrun exits 1 when any worker fails, whatever the worker's status; node.sh exits with
# DISTENGINE_PREEMPT_EXIT (75) when a local worker's last status was that one (the job
# stopped for preemption after writing its checkpoint), otherwise with torchrun's status.
# srun reports the highest status of its tasks, so one node reporting 75 while the others
# report 0 or 1 makes the step's status 75.
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
# SLURM_NODEID first: a NODE_RANK exported in the submitting shell would be the same on every node.
export NODE_RANK=${SLURM_NODEID:-${NODE_RANK:-}}
# SLURM signals every process of the step (scancel --signal), torchrun included; node.sh
# only has to outlive torchrun to report the workers' status.
export DISTENGINE_FORWARD_SIGNALS=0
exec bash "$here/node.sh" multi_node "$@"
