#!/usr/bin/env bash
# Elastic membership: run this on every node; nodes may join and leave while the job runs.
#
#   RDZV_ENDPOINT=node0:29400 RDZV_ID=myjob bash launchers/elastic.sh MIN:MAX NPROC script.py [args...]
#   RDZV_ENDPOINT=node0:29400 RDZV_ID=myjob bash launchers/elastic.sh 2:4 8 train.py --lr 0.1
#
# torchrun's agents meet through a c10d rendezvous at RDZV_ENDPOINT. Training starts once MIN
# nodes have joined (after RDZV_LAST_CALL more seconds for others to come), with NPROC workers
# per node. A node that joins later, or one that disappears, makes every agent restart its
# workers at the new world size (a new rendezvous round): the script resumes from its newest
# checkpoint (Checkpoint.latest) and, with a loader from idist.auto_dataloader, sees every
# sample of the interrupted data pass exactly once and the same global batches.
#
# When a node joins, the running workers receive SIGTERM from their agent: distengine treats
# it as a preemption (all ranks stop after the same iteration, the Checkpoint holding the
# trainer writes, status DISTENGINE_PREEMPT_EXIT), so no step is lost; the agent waits 30 s
# for that (torch's fixed timeout for membership restarts) before it SIGKILLs them. When a
# node disappears, its peers' collectives fail and they resume from the newest checkpoint.
#
# Environment (default):
#   RDZV_ENDPOINT   host:port of the rendezvous store, reachable from every node (required).
#                   The agent on that host serves it: that node must stay for the whole job
#                   (it may be any node; the others can come and go)
#   RDZV_ID         rendezvous id, the same on every node (distengine)
#   RDZV_IS_HOST    1: this node serves the rendezvous store, 0: it does not (default:
#                   torchrun guesses from RDZV_ENDPOINT's host name; set it where that guess
#                   can fail: NAT, DNS aliases, Kubernetes services)
#   RDZV_LAST_CALL  seconds to wait for more nodes once MIN have joined (30)
#   RDZV_JOIN_TIMEOUT  seconds a rendezvous round may take before the agent gives up (600)
#   RDZV_CONF       more rendezvous settings, key=value[,key=value], e.g.
#                   keep_alive_interval=5,keep_alive_max_attempt=3 (how soon a silent node
#                   is dropped from the rendezvous: 5 s x 3 by default)
#   MAX_RESTARTS    restarts after failures, per agent (10); membership changes are free
#   PET_SIGNALS_TO_HANDLE  signals torchrun forwards to the workers (see common.sh)
#
# TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 is exported: with torch's default (the workers share
# the rendezvous store) a node joining a running job hangs both agents until they fail with
# DistStoreError (measured with torch 2.13: launchers/README.md, "Elastic"). Checkpoints must
# live on storage every node reads (a shared file system or s3://...).
set -euo pipefail
usage="usage: RDZV_ENDPOINT=host:port [RDZV_ID=id] bash launchers/elastic.sh MIN:MAX NPROC script.py [args...]"
if [ $# -lt 3 ]; then
  echo "$usage" >&2
  exit 2
fi
nnodes=$1
nproc_per_node=$2
shift 2
# shellcheck source=launchers/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
min_nodes=${nnodes%%:*}
max_nodes=${nnodes##*:}
if [ "$min_nodes" = "$nnodes" ] || [ -z "$min_nodes" ] || [ -z "$max_nodes" ] \
  || [ -n "${min_nodes//[0-9]/}" ] || [ -n "${max_nodes//[0-9]/}" ] \
  || [ "$min_nodes" -lt 1 ] || [ "$max_nodes" -lt "$min_nodes" ]; then
  echo "error: MIN:MAX must be two integers with 1 <= MIN <= MAX (e.g. 1:4), got '$nnodes'" >&2
  exit 2
fi
distengine_require_uint NPROC "$nproc_per_node"
if [ "$nproc_per_node" -lt 1 ]; then
  echo "error: NPROC must be >= 1, got '$nproc_per_node'" >&2
  exit 2
fi
if [ -z "${RDZV_ENDPOINT:-}" ]; then
  echo "error: elastic.sh needs RDZV_ENDPOINT (host:port of the rendezvous) in the environment" >&2
  echo "$usage" >&2
  exit 2
fi
rdzv_host=${RDZV_ENDPOINT%:*}
rdzv_port=${RDZV_ENDPOINT##*:}
if [ "$rdzv_host" = "$RDZV_ENDPOINT" ] || [ -z "$rdzv_host" ] || [ -z "$rdzv_port" ] || [ -n "${rdzv_port//[0-9]/}" ]; then
  echo "error: RDZV_ENDPOINT must be host:port, got '$RDZV_ENDPOINT'" >&2
  exit 2
fi
max_restarts=${MAX_RESTARTS:-10}
last_call=${RDZV_LAST_CALL:-30}
join_timeout=${RDZV_JOIN_TIMEOUT:-600}
distengine_require_uint MAX_RESTARTS "$max_restarts"
distengine_require_uint RDZV_LAST_CALL "$last_call"
distengine_require_uint RDZV_JOIN_TIMEOUT "$join_timeout"
conf="join_timeout=$join_timeout,last_call_timeout=$last_call"
case "${RDZV_IS_HOST:-}" in
  '') ;;
  1 | true) conf="$conf,is_host=true" ;;
  0 | false) conf="$conf,is_host=false" ;;
  *)
    echo "error: RDZV_IS_HOST must be 1 or 0 (or unset), got '$RDZV_IS_HOST'" >&2
    exit 2
    ;;
esac
[ -z "${RDZV_CONF:-}" ] || conf="$conf,$RDZV_CONF"
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
exec torchrun \
  --nnodes="$min_nodes:$max_nodes" --nproc-per-node="$nproc_per_node" \
  --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="${RDZV_ID:-distengine}" \
  --rdzv-conf="$conf" --max-restarts="$max_restarts" "$@"
