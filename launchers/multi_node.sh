#!/usr/bin/env bash
# Several nodes: run this once on every node; torchrun's agents meet through a c10d
# rendezvous hosted by the agent of node 0.
#
#   # on node 0 (whose address is in RDZV_ENDPOINT) and on node 1:
#   NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=node0:29400 bash launchers/multi_node.sh script.py [args...]
#   NNODES=2 NODE_RANK=1 RDZV_ENDPOINT=node0:29400 bash launchers/multi_node.sh script.py [args...]
#
# Environment:
#   NNODES          number of nodes (required)
#   NODE_RANK       this node, 0..NNODES-1 (required); node 0 hosts the rendezvous store,
#                   so it must run on the host named in RDZV_ENDPOINT
#   RDZV_ENDPOINT   host:port of node 0, reachable from every node (required)
#   RDZV_ID         rendezvous id, the same on every node (default: distengine)
#   NPROC_PER_NODE  worker processes per node (GPUs torch sees, 1 without a GPU)
#   MAX_RESTARTS    torchrun --max-restarts (3); a failure on any node restarts every node's
#                   workers, which resume from the latest checkpoint
#   PET_SIGNALS_TO_HANDLE  signals torchrun forwards to the workers
#                   (SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1)
# Checkpoints must live on storage every node reads (a shared file system or s3://...).
# Everything after the variables is passed to torchrun unchanged ("$@").
set -euo pipefail
usage="usage: NNODES=N NODE_RANK=R RDZV_ENDPOINT=host:port bash launchers/multi_node.sh script.py [args...]"
if [ $# -lt 1 ]; then
  echo "$usage" >&2
  exit 2
fi
missing=()
for name in NNODES NODE_RANK RDZV_ENDPOINT; do
  [ -n "${!name:-}" ] || missing+=("$name")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "error: multi_node.sh needs ${missing[*]} in the environment" >&2
  echo "$usage" >&2
  exit 2
fi
# shellcheck source=launchers/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
max_restarts=${MAX_RESTARTS:-3}
distengine_require_uint NNODES "$NNODES"
distengine_require_uint NODE_RANK "$NODE_RANK"
distengine_require_uint MAX_RESTARTS "$max_restarts"
if [ "$NNODES" -lt 1 ] || [ "$NODE_RANK" -ge "$NNODES" ]; then
  echo "error: expected 0 <= NODE_RANK < NNODES, got NODE_RANK=$NODE_RANK NNODES=$NNODES" >&2
  exit 2
fi
rdzv_host=${RDZV_ENDPOINT%:*}
rdzv_port=${RDZV_ENDPOINT##*:}
if [ "$rdzv_host" = "$RDZV_ENDPOINT" ] || [ -z "$rdzv_host" ] || [ -z "$rdzv_port" ] || [ -n "${rdzv_port//[0-9]/}" ]; then
  echo "error: RDZV_ENDPOINT must be host:port (the address of node 0), got '$RDZV_ENDPOINT'" >&2
  exit 2
fi
nproc_per_node=$(distengine_default_nproc)
distengine_require_uint NPROC_PER_NODE "$nproc_per_node"
# Node 0 hosts the store explicitly: torchrun's own guess (does the endpoint's host name
# match this machine?) can fail behind NAT, DNS aliases or Kubernetes services; then no
# agent hosts the store and every node retries until the rendezvous times out.
is_host=false
[ "$NODE_RANK" -eq 0 ] && is_host=true
exec torchrun \
  --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$nproc_per_node" \
  --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="${RDZV_ID:-distengine}" \
  --rdzv-conf="is_host=$is_host" --max-restarts="$max_restarts" "$@"
