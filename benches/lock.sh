#!/usr/bin/env bash
# `make bench-lock`: lock 500 distinct tags over 20 repositories (100 YAML files) on a local
# docker-registry, with packsmith and with the peer kbld is measured against on this machine
# kind (`crane digest`, 4 workers, as kbld's default 4-worker pool; see testbed.md), then a
# warm re-lock. Requests are counted from the registry's own access log: one line per request.
# Not a timed test: it prints figures and fails only if something does not work.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPOS=${BENCH_REPOS:-20}
TAGS=${BENCH_TAGS:-25}
RUNS=${BENCH_RUNS:-5}
PACKSMITH=${PACKSMITH:-$ROOT/target/release/packsmith}
CRANE=${CRANE:-$(command -v crane || echo "$(go env GOPATH)/bin/crane")}

[[ -x $PACKSMITH ]] || { echo "bench: $PACKSMITH missing (cargo build --release)"; exit 1; }
[[ -x $CRANE ]] || { echo "bench: crane missing (go install github.com/google/go-containerregistry/cmd/crane@v0.22.1)"; exit 1; }
command -v docker-registry >/dev/null || { echo "bench: docker-registry missing (apt-get install docker-registry)"; exit 1; }

WORK=$(mktemp -d /tmp/packsmith-bench-lock.XXXXXX)
REGISTRY_PID=
cleanup() {
  # The registry dies of this TERM (status 143); under set -e that status must not become the
  # script's, or make reports a bench that ran fine as failed.
  if [[ -n $REGISTRY_PID ]]; then
    kill "$REGISTRY_PID" 2>/dev/null || true
    wait "$REGISTRY_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
HOST=127.0.0.1:$PORT
cat >"$WORK/registry.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $WORK/storage
http:
  addr: $HOST
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 100); do curl -fsS "http://$HOST/v2/" >/dev/null 2>&1 && break; sleep 0.1; done

# One request per access-log line: `127.0.0.1 - - [..] "HEAD /v2/... HTTP/1.1" 200 ...`.
requests() { grep -cE '"(GET|HEAD|PUT|POST|PATCH|DELETE) /v2/' "$WORK/registry.log" || true; }
manifest_requests() { grep -cE '"(GET|HEAD) /v2/[^ ]*/manifests/' "$WORK/registry.log" || true; }

echo "bench: seeding $((REPOS * TAGS)) images ($REPOS repositories x $TAGS tags) on $HOST"
mkdir -p "$WORK/layers" "$WORK/tree"
: >"$WORK/refs"
for r in $(seq -w 1 "$REPOS"); do
  for t in $(seq -w 1 "$TAGS"); do
    echo "bench/app-$r:v1.$t" >>"$WORK/refs"
  done
done
# Distinct content per tag, so every tag has its own digest.
seed_one() {
  local ref=$1 dir
  dir=$(mktemp -d "$WORK/layers/l.XXXXXX")
  echo "$ref" >"$dir/content"
  tar -C "$dir" -cf "$dir.tar" content
  "$CRANE" append --insecure -f "$dir.tar" -t "$HOST/$ref" >/dev/null 2>&1
}
export -f seed_one
export WORK CRANE HOST
xargs -P 8 -I{} bash -c 'seed_one {}' <"$WORK/refs"

# 100 files of 5 Deployments each, one reference per Deployment.
split -l 5 -d -a 3 "$WORK/refs" "$WORK/chunk."
for chunk in "$WORK"/chunk.*; do
  out="$WORK/tree/deploy-${chunk##*.}.yaml"
  while read -r ref; do
    name=${ref//[\/:.]/-}
    cat >>"$out" <<YML
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $name
spec:
  template:
    spec:
      containers:
      - name: app
        image: $HOST/$ref
YML
  done <"$chunk"
done
UNIQUE=$(wc -l <"$WORK/refs")
echo "bench: $(ls "$WORK/tree" | wc -l) YAML files, $UNIQUE unique references"

now() { date +%s%N; }
# The registry's CPU time in ms (utime + stime of its process): it does most of the work.
TICK=$(getconf CLK_TCK)
registry_cpu() { awk -v t="$TICK" '{printf "%d", ($14 + $15) * 1000 / t}' "/proc/$REGISTRY_PID/stat"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms() { awk -v n="$1" 'BEGIN {printf "%.0f ms", n/1e6}'; }

packsmith_cold() {
  rm -rf "$WORK/tree/.imgpkg"
  "$PACKSMITH" lock -f "$WORK/tree" --imgpkg-lock-output "$WORK/out/images.yml" \
    --registry-insecure-host "$HOST" --concurrency 16 2>"$WORK/packsmith.err"
}
crane_peer() {
  sed "s|^|$HOST/|" "$WORK/refs" | xargs -P 4 -n 1 "$CRANE" digest --insecure >"$WORK/crane.out"
}

declare -a P_TIMES C_TIMES
before=$(requests); before_m=$(manifest_requests); before_cpu=$(registry_cpu)
: >"$WORK/packsmith.cpu"
for i in $(seq "$RUNS"); do
  s=$(now)
  # bash's `time` keyword: user and system seconds of this run, appended to packsmith.cpu.
  { TIMEFORMAT='%3U %3S'; time packsmith_cold; } 2>>"$WORK/packsmith.cpu"
  P_TIMES+=($(( $(now) - s )))
done
p_registry_cpu=$(( ($(registry_cpu) - before_cpu) / RUNS ))
P_CPU=$(awk '{print ($1 + $2) * 1000}' "$WORK/packsmith.cpu" | median)
p_requests=$(( ($(requests) - before) / RUNS ))
p_manifests=$(( ($(manifest_requests) - before_m) / RUNS ))
images=$(grep -c 'kbld.carvel.dev/id' "$WORK/out/images.yml")
[[ $images == "$UNIQUE" ]] || { echo "bench: packsmith locked $images images, expected $UNIQUE"; exit 1; }

before=$(requests); before_cpu=$(registry_cpu)
for i in $(seq "$RUNS"); do
  s=$(now); crane_peer; C_TIMES+=($(( $(now) - s )))
done
c_registry_cpu=$(( ($(registry_cpu) - before_cpu) / RUNS ))
c_requests=$(( ($(requests) - before) / RUNS ))
[[ $(wc -l <"$WORK/crane.out") == "$UNIQUE" ]] || { echo "bench: crane resolved $(wc -l <"$WORK/crane.out")"; exit 1; }

# Warm: the lock sits in the tree (.imgpkg/images.yml), as after a release.
mkdir -p "$WORK/tree/.imgpkg" && cp "$WORK/out/images.yml" "$WORK/tree/.imgpkg/images.yml"
before=$(requests)
s=$(now)
"$PACKSMITH" lock -f "$WORK/tree" --imgpkg-lock-output "$WORK/tree/.imgpkg/images.yml" \
  --registry-insecure-host "$HOST" 2>"$WORK/warm.err"
warm=$(( $(now) - s ))
warm_requests=$(( $(requests) - before ))

P=$(printf '%s\n' "${P_TIMES[@]}" | median)
C=$(printf '%s\n' "${C_TIMES[@]}" | median)
echo
echo "lock, $UNIQUE tags over $REPOS repositories, median of $RUNS runs (same registry, same run):"
printf '  packsmith lock (16 in flight)   %8s   %s requests/reference (%s manifest)\n' \
  "$(ms "$P")" "$(awk -v a="$p_requests" -v b="$UNIQUE" 'BEGIN {printf "%.3f", a/b}')" \
  "$(awk -v a="$p_manifests" -v b="$UNIQUE" 'BEGIN {printf "%.3f", a/b}')"
printf '  crane digest x4 workers (peer)  %8s   %s requests/reference\n' \
  "$(ms "$C")" "$(awk -v a="$c_requests" -v b="$UNIQUE" 'BEGIN {printf "%.3f", a/b}')"
printf '  speed-up                        %8sx\n' "$(awk -v p="$P" -v c="$C" 'BEGIN {printf "%.1f", c/p}')"
printf '  warm re-lock (lock in the tree) %8s   %s requests\n' "$(ms "$warm")" "$warm_requests"
echo "  packsmith says: $(tail -1 "$WORK/packsmith.err")"
# Where the time goes: docker-registry 2.8 spends about a millisecond of CPU on every request
# whatever it is (it builds its URL router, regular expressions included, per request), so a
# client that makes one request per reference is bound by the registry's CPU, not its own.
CORES=$(nproc)
printf '  registry CPU per run: packsmith %s ms (%s ms/request), crane %s ms; %s cores\n' \
  "$p_registry_cpu" "$(awk -v c="$p_registry_cpu" -v r="$p_requests" 'BEGIN {printf "%.2f", c/r}')" \
  "$c_registry_cpu" "$CORES"
printf '  packsmith CPU per run (user + system, median): %s ms\n' "$P_CPU"
printf '  floor for %s requests with this registry on %s cores: %s ms\n' "$p_requests" "$CORES" \
  "$(awk -v c="$p_registry_cpu" -v n="$CORES" 'BEGIN {printf "%.0f", c/n}')"

# Parity, next to the speed: the real bundles of testdata/ (see benches/corpus.sh).
PACKSMITH="$PACKSMITH" bash "$ROOT/benches/corpus.sh"
