#!/usr/bin/env bash
# Fault injection on a running test bed's registries:
#   stop    kill the registry; its storage and config stay, so start brings the same content back
#   start   restart it on the same port with the same config, and wait until it answers
#   pause   SIGSTOP: the port still accepts connections but nothing answers (a hanging registry)
#   resume  SIGCONT
#
# usage: ctl.sh STATE_DIR stop|start|pause|resume plain|tls
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE=$(state_dir_arg "${1:-}")
action=${2:-}
kind=${3:-}
[[ $kind == plain || $kind == tls ]] || die "usage: ctl.sh STATE_DIR stop|start|pause|resume plain|tls"
[[ -f $(registry_dir "$STATE" "$kind")/config.yml ]] || die "no $kind registry in $STATE (run up.sh first)"
name=registry-$kind

case $action in
  stop)
    stop_process "$STATE" "$name" 5
    ;;
  start)
    if pid=$(pid_of "$STATE" "$name"); then
      kill -CONT "$pid" # a paused registry counts as running; make it answer again
    else
      registry_start "$STATE" "$kind"
    fi
    rc=0
    wait_ready "$STATE" "$name" "${PACKSMITH_E2E_SERVICE_TIMEOUT:-20}" registry_ready "$STATE" "$kind" || rc=$?
    if ((rc != 0)); then
      fail_component "$STATE" "$name"
      exit 1
    fi
    ;;
  pause | resume)
    pid=$(pid_of "$STATE" "$name") || die "$name is not running"
    if [[ $action == pause ]]; then kill -STOP "$pid"; else kill -CONT "$pid"; fi
    ;;
  *)
    die "usage: ctl.sh STATE_DIR stop|start|pause|resume plain|tls"
    ;;
esac
