#!/usr/bin/env bash
# `make bench-controller` (issue #7): the controller at scale. N small PackageSources (one inline
# ConfigMap manifest, no image lock, pushed to the bed's anonymous registry, interval 1h) are
# created in one namespace, then `packsmith controller` is started and we measure:
#   - time from the controller's start until all N are Ready=True (list polled every second),
#   - the controller's peak (VmHWM) and steady (VmRSS) resident memory,
#   - on the way to Ready, per object: object writes (Package, PackageMetadata, status) and
#     events, apart (the budget is 3 object writes and one `Published` event),
#   - over a steady-state window of STEADY seconds after that: API writes (delta of the
#     controller's packsmith_api_writes_total) and registry requests (lines of the plain
#     registry's log), both per minute.
# Printed next to Flux's published reference (source-controller, 1,000 OCIRepositories Ready in
# 85 s using 67 MiB; fluxcd/flux-benchmark RESULTS.md, run with concurrency 10 — so is this,
# unless CONCURRENT says otherwise) and the goals. Not a test: it asserts nothing.
#
# Environment: N (1000), CONCURRENT (10, per process), STEADY (60), INTERVAL (1h), PACKSMITH (release binary),
# PACKSMITH_E2E_ENV (use that bed instead of starting and stopping one), SHARDS (0: one
# controller; K: the objects labelled round-robin `sharding.packsmith.dev/key: shard1..K` and
# K controllers with `--watch-label-selector`, memory reported per process).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
N="${N:-1000}"
SHARDS="${SHARDS:-0}"
CONCURRENT="${CONCURRENT:-10}"
STEADY="${STEADY:-60}"
INTERVAL="${INTERVAL:-1h}"
READY_TIMEOUT="${READY_TIMEOUT:-900}"
PACKSMITH="${PACKSMITH:-$ROOT/target/release/packsmith}"
KUBE_PY="$ROOT/benches/kube.py"

owned=""
work="$(mktemp -d /tmp/packsmith-bench-ctl-XXXXXX)"
ns="bench-ctl-$(date +%s)"
ctl_pids=()
cleanup() {
  set +e
  for pid in "${ctl_pids[@]}"; do
    kill -0 "$pid" 2>/dev/null && kill -TERM "$pid"
  done
  # Up to a minute each: reconciles in flight finish first, and a dhat-heap build writes its
  # profile on the way out.
  for pid in "${ctl_pids[@]}"; do
    for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [[ -n "$owned" ]]; then
    bash "$ROOT/e2e/scripts/down.sh" "$owned" >&2
  elif [[ -n "${KUBECONFIG_FILE:-}" ]]; then
    # A bed we borrowed: leave it as we found it (the controller is gone, so drop the finalizers).
    python3 "$KUBE_PY" "$KUBECONFIG_FILE" release "$ns" >&2
  fi
  [[ -n "${KEEP_WORK:-}" ]] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ -x "$PACKSMITH" ]] || { echo "bench-controller: no $PACKSMITH (make bench-controller builds it)" >&2; exit 1; }

if [[ -z "${PACKSMITH_E2E_ENV:-}" ]]; then
  owned="$work/bed"
  bash "$ROOT/e2e/scripts/up.sh" "$owned" >&2
  PACKSMITH_E2E_ENV="$owned/env"
fi
set -a
# shellcheck disable=SC1090
source "$PACKSMITH_E2E_ENV"
set +a
KUBECONFIG_FILE="$PACKSMITH_E2E_KUBECONFIG"
REGISTRY_LOG="$PACKSMITH_E2E_STATE_DIR/logs/registry-plain.log"

kube() { python3 "$KUBE_PY" "$KUBECONFIG_FILE" "$@"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

kube apply-crds "$ROOT"/crds/*.yaml "$ROOT"/e2e/crds/kapp-controller/*.yaml >&2
kube namespace "$ns"
kube create-sources "$ns" "$N" "$PACKSMITH_E2E_REGISTRY" "$INTERVAL" 16 "$SHARDS" >&2

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
controllers=$((SHARDS > 0 ? SHARDS : 1))
metrics_urls=()

# Sum of a counter over all its label sets, over every controller.
metric_sum() { # NAME
  for url in "${metrics_urls[@]}"; do curl -sf --max-time 5 "$url"; done |
    awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d", s }'
}
# The largest value of a /proc/PID/status field (kB) over the controllers.
status_kb() {
  for pid in "${ctl_pids[@]}"; do awk -v k="$1:" '$1 == k { print $2 }' "/proc/$pid/status"; done | sort -n | tail -1
}
# Every controller's value, for the per-shard line.
status_kb_each() {
  for pid in "${ctl_pids[@]}"; do awk -v k="$1:" '$1 == k { printf "%.1f ", $2 / 1024 }' "/proc/$pid/status"; done
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
cpu_seconds() {
  for pid in "${ctl_pids[@]}"; do cat "/proc/$pid/stat"; done |
    awk -v hz="$(getconf CLK_TCK)" '{ s += ($14 + $15) / hz } END { printf "%.1f", s }'
}
# docker-registry writes two lines per request; count its access-log lines ("IP - - [date] ...").
reg_lines() { grep -c '^[0-9.]* - - \[' "$REGISTRY_LOG" || true; }
reg_pings() { grep -c '"GET /v2/ HTTP' "$REGISTRY_LOG" || true; }

# CPU seconds of each server of the bed (a borrowed external cluster has no pids: skipped).
bed_cpu() {
  local f pid
  for f in "$PACKSMITH_E2E_STATE_DIR"/pids/*.pid; do
    [[ -e $f ]] || continue
    pid=$(<"$f")
    [[ -r /proc/$pid/stat ]] || continue
    awk -v n="$(basename "$f" .pid)" -v hz="$(getconf CLK_TCK)" '{ printf "%s %.1f\n", n, ($14 + $15) / hz }' "/proc/$pid/stat"
  done
}
bed_cpu >"$work/bed-cpu-0"
reg_before_start=$(reg_lines)
pings_before_start=$(reg_pings)
t_start=$(now)
for c in $(seq "$controllers"); do
  metrics_port=$(free_port)
  health_port=$(free_port)
  metrics_urls+=("http://127.0.0.1:$metrics_port/metrics")
  selector=()
  ((SHARDS > 0)) && selector=(--watch-label-selector "sharding.packsmith.dev/key in (shard$c)")
  RUST_LOG="${RUST_LOG:-warn}" KUBECONFIG="$KUBECONFIG_FILE" "$PACKSMITH" controller --namespace "$ns" \
    --concurrent "$CONCURRENT" --cache-dir "$work/cache" --kubeconfig "$KUBECONFIG_FILE" \
    --metrics-addr "127.0.0.1:$metrics_port" --health-addr "127.0.0.1:$health_port" \
    "${selector[@]}" >"$work/controller-$c.log" 2>&1 &
  ctl_pids+=($!)
done

# Poll until all N are Ready (print progress every 10 s).
ready=0 t_ready=""
deadline=$(($(date +%s) + READY_TIMEOUT))
last_print=0
while :; do
  for c in "${!ctl_pids[@]}"; do
    kill -0 "${ctl_pids[$c]}" 2>/dev/null || { echo "bench-controller: controller $((c + 1)) exited:" >&2; tail -20 "$work/controller-$((c + 1)).log" >&2; exit 1; }
  done
  read -r ready total < <(kube ready "$ns")
  if ((ready >= N)); then t_ready=$(now); break; fi
  if (($(date +%s) - last_print >= 10)); then
    echo "bench-controller: $(elapsed "$t_start" "$(now)")s: $ready/$total Ready, RSS $(mib "$(status_kb VmRSS)") MiB" >&2
    last_print=$(date +%s)
  fi
  (($(date +%s) < deadline)) || { echo "bench-controller: only $ready/$N Ready after ${READY_TIMEOUT}s" >&2; break; }
  sleep 1
done
ramp_s=$(elapsed "$t_start" "${t_ready:-$(now)}")
ramp_writes=$(metric_sum packsmith_api_writes_total)
ramp_events=$(for url in "${metrics_urls[@]}"; do curl -sf --max-time 5 "$url"; done |
  awk '/^packsmith_api_writes_total\{/ && /resource="events"/ { s += $NF } END { printf "%d", s }')
ramp_objects=$((ramp_writes - ramp_events))
# Per resource and verb, per object: where the writes on the way to Ready go.
ramp_write_kinds=$(for url in "${metrics_urls[@]}"; do curl -sf --max-time 5 "$url"; done | awk -v n="$N" '
  /^packsmith_api_writes_total\{/ {
    match($0, /resource="[^"]*"/); r = substr($0, RSTART + 10, RLENGTH - 11)
    match($0, /verb="[^"]*"/); v = substr($0, RSTART + 6, RLENGTH - 7)
    w[v " " r] += $NF
  }
  END { for (k in w) { printf "%s%s %.2f", sep, k, w[k] / n; sep = ", " } }')
ramp_reg=$(($(reg_lines) - reg_before_start))
ramp_pings=$(($(reg_pings) - pings_before_start))
ramp_cpu=$(cpu_seconds)
bed_cpu >"$work/bed-cpu-1"
hwm_ramp=$(status_kb VmHWM)

# Steady state: nothing changes and every object's next reconcile is an interval away.
w0=$(metric_sum packsmith_api_writes_total)
r0=$(reg_lines)
rec0=$(metric_sum packsmith_reconcile_total)
c0=$(cpu_seconds)
sleep "$STEADY"
w1=$(metric_sum packsmith_api_writes_total)
r1=$(reg_lines)
rec1=$(metric_sum packsmith_reconcile_total)
c1=$(cpu_seconds)
rss_steady=$(status_kb VmRSS)
hwm=$(status_kb VmHWM)
cache_kib=$(du -sk "$work/cache" | cut -f1)
cache_dirs=$(find "$work/cache" -mindepth 2 -maxdepth 2 -type d | wc -l)

per_min() { awk -v d="$1" -v s="$STEADY" 'BEGIN { printf "%.1f", d * 60 / s }'; }
ready_cell="$ramp_s s"
[[ -n "$t_ready" ]] || ready_cell="> $ramp_s s ($ready/$N)"

echo
echo "packsmith controller, $N PackageSources (inline, no image lock, plain registry), --concurrent $CONCURRENT, interval $INTERVAL$( ((SHARDS > 0)) && echo ", $SHARDS shards")"
printf '%-34s %-22s %-28s %s\n' "" "packsmith" "Flux (1,000 OCIRepositories)" "goal (1,000)"
printf '%-34s %-22s %-28s %s\n' "all Ready after controller start" "$ready_cell" "85 s" "< 60 s"
printf '%-34s %-22s %-28s %s\n' "peak RSS (VmHWM)" "$(mib "$hwm") MiB" "67 MiB" "< 64 MiB"
printf '%-34s %-22s %-28s %s\n' "steady RSS (VmRSS, after ${STEADY}s)" "$(mib "$rss_steady") MiB" "-" "< 64 MiB"
printf '%-34s %-22s %-28s %s\n' "steady API writes / min" "$(per_min $((w1 - w0)))" "-" "≈ 0"
printf '%-34s %-22s %-28s %s\n' "steady registry requests / min" "$(per_min $((r1 - r0)))" "-" "-"
echo
echo "ramp API writes per object by verb and resource: $ramp_write_kinds"
per_object() { awk -v a="$1" -v n="$N" 'BEGIN { printf "%.2f", a / n }'; }
echo "ramp: $ramp_objects object writes ($(per_object "$ramp_objects") per object; budget 3) and $ramp_events events ($(per_object "$ramp_events") per object; budget 1)," \
  "$ramp_reg registry requests ($(awk -v a="$ramp_reg" -v n="$N" 'BEGIN { printf "%.1f", a / n }') per object, $ramp_pings of them GET /v2/)," \
  "${ramp_cpu}s controller CPU, peak RSS during ramp $(mib "$hwm_ramp") MiB"
echo "CPU seconds during the ramp: packsmith $ramp_cpu, $(awk 'NR == FNR { a[$1] = $2; next } $1 in a { printf "%s%s %.1f", sep, $1, $2 - a[$1]; sep = ", " }' "$work/bed-cpu-0" "$work/bed-cpu-1")" \
  "(of $(awk -v r="$ramp_s" -v c="$(nproc)" 'BEGIN { printf "%.0f", r * c }') available on $(nproc) cores)"
echo "steady window: $((rec1 - rec0)) reconciles, $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.1f", b - a }')s CPU"
echo "work dirs: $cache_dirs under --cache-dir, $(mib "$cache_kib") MiB on disk"
# RSS is the process's own memory (anonymous: heap, stacks) plus the pages of the binary and
# its libraries it has touched (file-backed, shared by every process of the same binary on a
# node): say which is which.
echo "steady RSS split per process (MiB, anonymous + file-backed): $(for pid in "${ctl_pids[@]}"; do awk '$1 == "RssAnon:" { a = $2 } $1 == "RssFile:" { f = $2 } END { printf "%.1f + %.1f  ", a / 1024, f / 1024 }' "/proc/$pid/status"; done)"
if ((SHARDS > 0)); then
  echo "$SHARDS shards: peak RSS per process (MiB): $(status_kb_each VmHWM); steady: $(status_kb_each VmRSS)"
fi
if [[ -n "${SHOW_METRICS:-}" ]]; then for url in "${metrics_urls[@]}"; do curl -sf "$url"; done | grep -v "^#" | grep -v _bucket >&2; fi
