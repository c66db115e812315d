#!/usr/bin/env bash
# Runs one torchrun worker and records its exit status in a file, because torchrun does not
# pass it on: the agent exits 1 whenever a worker fails, whatever that worker's status (so
# distengine's preemption status, DISTENGINE_PREEMPT_EXIT=75, would be lost).
#
#   DISTENGINE_STATUS_DIR=/tmp/status torchrun [options] --no-python \
#       bash launchers/record_exit.sh python -u script.py [args...]
#
# Writes the status to $DISTENGINE_STATUS_DIR/local_rank_$LOCAL_RANK (each restart
# attempt overwrites it, so the file holds the last attempt's status). launchers/node.sh
# reads these files. DISTENGINE_LAUNCHER_PID is set to torchrun's agent (this shell's
# parent): the worker watches that process, not this shell, and ends when the agent is
# gone (a SIGKILLed agent would otherwise leave this shell and the worker running).
set -u
if [ $# -lt 1 ]; then
  echo "usage: DISTENGINE_STATUS_DIR=DIR bash launchers/record_exit.sh command [args...]" >&2
  exit 2
fi
if [ -z "${DISTENGINE_STATUS_DIR:-}" ] || [ ! -d "$DISTENGINE_STATUS_DIR" ]; then
  echo "error: record_exit.sh needs DISTENGINE_STATUS_DIR set to an existing directory, got '${DISTENGINE_STATUS_DIR:-}'" >&2
  exit 2
fi
# torchrun signals the worker's whole process group: this shell, the Python process and
# its DataLoader workers. If this shell died of the signal, the agent would see the worker
# gone and exit, and the scheduler would then kill whatever is left of the job, the Python
# process included, in the middle of writing its checkpoint. A trap keeps the shell alive:
# bash runs it only once the foreground command has returned. The command itself starts
# with the default dispositions, so it still receives and handles the signals.
trap ':' TERM INT HUP QUIT USR1 USR2
export DISTENGINE_LAUNCHER_PID=$PPID
"$@"
status=$?
echo "$status" >"$DISTENGINE_STATUS_DIR/local_rank_${LOCAL_RANK:-0}"
exit "$status"
