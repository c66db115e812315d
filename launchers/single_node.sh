#!/usr/bin/env bash
# One node, one process per GPU: a thin wrapper over `torchrun --standalone`.
#
#   bash launchers/single_node.sh script.py [script args...]
#   NPROC_PER_NODE=4 bash launchers/single_node.sh examples/cifar10/main.py --epochs 30
#   bash launchers/single_node.sh --log-dir logs script.py    # torchrun options go before the script
#
# Environment (default):
#   NPROC_PER_NODE  worker processes (the number of GPUs torch sees, 1 without a GPU)
#   MAX_RESTARTS    torchrun --max-restarts (3): a crashed worker restarts every worker and
#                   the script resumes from its latest checkpoint
#   PET_SIGNALS_TO_HANDLE  signals torchrun forwards to the workers
#                   (SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1)
# Everything after the variables is passed to torchrun unchanged ("$@").
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: [NPROC_PER_NODE=N] [MAX_RESTARTS=K] bash launchers/single_node.sh script.py [args...]" >&2
  exit 2
fi
# shellcheck source=launchers/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
nproc_per_node=$(distengine_default_nproc)
max_restarts=${MAX_RESTARTS:-3}
distengine_require_uint NPROC_PER_NODE "$nproc_per_node"
distengine_require_uint MAX_RESTARTS "$max_restarts"
exec torchrun --standalone --nproc-per-node="$nproc_per_node" --max-restarts="$max_restarts" "$@"
