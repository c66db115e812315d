#!/usr/bin/env bash
# CPU simulation: N gloo ranks on this machine (what CI and the README's main job use).
#
#   bash launchers/cpu.sh NPROC script.py [script args...]
#   bash launchers/cpu.sh 2 examples/cifar10/main.py --epochs 3
#
# Environment: MAX_RESTARTS (default 0) is passed to torchrun's --max-restarts, so a crashed
# rank restarts every rank and the script resumes from its latest checkpoint.
# OMP_NUM_THREADS defaults to cores / NPROC (at least 1) so ranks do not oversubscribe.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash launchers/cpu.sh NPROC script.py [args...]" >&2
  exit 2
fi
nproc_per_node=$1
shift
cores=$(nproc 2>/dev/null || echo 1)
threads=$(( cores / nproc_per_node ))
[ "$threads" -ge 1 ] || threads=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}
# gloo even where CUDA is visible: this is the CPU simulation (DISTENGINE_BACKEND is read by
# idist.initialize() when no backend is passed).
export DISTENGINE_BACKEND=${DISTENGINE_BACKEND:-gloo}
# torchrun's agent forwards these to the workers (SIGUSR1 is not in torch's default list:
# without it a SIGUSR1 kills the agent and orphans the ranks).
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
exec torchrun --standalone --nproc_per_node="$nproc_per_node" \
  --max-restarts="${MAX_RESTARTS:-0}" "$@"
