#!/usr/bin/env bash
# Stops every server of a test bed started by up.sh and removes its state dir (keeps it when
# PACKSMITH_E2E_KEEP=1, e.g. to read the logs). Safe to run twice, on a half-started bed, or on a
# dir that does not exist: a test's cleanup must never fail.
#
# usage: down.sh STATE_DIR
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE=$(state_dir_arg "${1:-}")
[[ -d $STATE ]] || exit 0
# rm -rf on a mistyped argument (down.sh "$HOME") must not happen: only a dir that up.sh laid out
# is removed.
is_bed=0
[[ -d $STATE/pids && -d $STATE/logs ]] && is_bed=1

stop_all "$STATE" 5

if [[ ${PACKSMITH_E2E_KEEP:-} == 1 ]]; then
  log "kept $STATE"
elif ((!is_bed)); then
  log "not removing $STATE: it has no pids/ and logs/, so up.sh did not make it"
else
  rm -rf -- "$STATE"
fi
