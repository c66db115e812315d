# Shared defaults of single_node.sh and multi_node.sh (sourced, not run).
#
# - NPROC_PER_NODE defaults to the number of GPUs torch can see on this node (it honours
#   CUDA_VISIBLE_DEVICES, as the workers will), or 1 without a GPU.
# - torchrun forwards SIGTERM, SIGINT, SIGHUP and SIGQUIT to its workers; SIGUSR1 (what
#   SLURM and other schedulers send ahead of a preemption) is added here. Without it a
#   SIGUSR1 to the agent kills the agent and leaves the workers running as orphans
#   (measured: launchers/README.md, "Signals"). torchrun reads PET_SIGNALS_TO_HANDLE as
#   its --signals-to-handle option (torch >= 2.9; older versions ignore the variable).

distengine_default_nproc() {
  if [ -n "${NPROC_PER_NODE:-}" ]; then
    echo "$NPROC_PER_NODE"
    return
  fi
  local n
  n=$("${PYTHON:-python}" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null) || n=0
  if [ "${n:-0}" -ge 1 ] 2>/dev/null; then echo "$n"; else echo 1; fi
}

distengine_require_uint() {
  # distengine_require_uint NAME VALUE: exits with a clear message unless VALUE is an integer >= 0.
  case "$2" in
    '' | *[!0-9]*)
      echo "error: $1 must be a non-negative integer, got '$2'" >&2
      exit 2
      ;;
  esac
}

export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
