#!/usr/bin/env bash
# Benchmark of bundle push/pull: packsmith against crane (go-containerregistry, the library
# imgpkg is built on; imgpkg itself cannot be installed on the bed).
#
# Cases: one 1 MiB file, one 50 MiB file, 5,000 small files. For each: a fresh push (a new
# repository, nothing there yet), a re-push of the unchanged bundle, and a pull. crane gets the
# uncompressed layer tarball ready-made (untimed) and times `crane append` of it (it gzips,
# hashes and uploads) and `crane pull`; packsmith is timed from the directory, tar included.
# Median of RUNS runs, all in one registry started here, so the figures compare within a run.
# packsmith keeps layer digests in its cache (here a fresh XDG_CACHE_HOME under the work dir):
# a re-push of the unchanged tree skips tar and gzip; a "fresh" push of a tree the cache knows,
# to a new repository, still archives the layer again to upload it.
#
# usage: benches/bundle_push.sh [PACKSMITH_BIN]     (make bench-push builds it in release mode)
set -euo pipefail

PACKSMITH=${1:-target/release/packsmith}
CRANE=${CRANE:-$(command -v crane || echo "$HOME/go/bin/crane")}
RUNS=${RUNS:-5}
[[ -x $PACKSMITH ]] || { echo "no packsmith binary at $PACKSMITH" >&2; exit 1; }
[[ -x $CRANE ]] || {
  echo "crane not found: go install github.com/google/go-containerregistry/cmd/crane@v0.22.1" >&2
  exit 1
}
command -v docker-registry >/dev/null || { echo "docker-registry not found (apt-get install docker-registry)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/packsmith-bench-push.XXXXXX")
export XDG_CACHE_HOME=$work/cache
registry_pid=
cleanup() {
  # The registry dies of the TERM sent here; its status must not become the script's.
  if [[ -n $registry_pid ]]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg=127.0.0.1:$port
cat >"$work/registry.yml" <<EOF
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $work/registry } }
http: { addr: $reg }
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 50); do curl -fs "http://$reg/v2/" >/dev/null && break; sleep 0.1; done

# Content: base64 of random bytes, the compressibility of generated YAML with embedded data.
mkbundle() { # DIR
  mkdir -p "$1/.imgpkg"
  printf -- '---\napiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\n' >"$1/.imgpkg/images.yml"
}
mkbundle "$work/1mib" && head -c 786432 /dev/urandom | base64 >"$work/1mib/data.yml"
mkbundle "$work/50mib" && head -c 39321600 /dev/urandom | base64 >"$work/50mib/data.yml"
mkbundle "$work/5000files"
python3 - "$work/5000files" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(6)
for i in range(5000):
    d = os.path.join(root, "config", f"d{i % 50:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:04d}.yml"), "w") as f:
        for j in range(rnd.randint(5, 40)):
            f.write(f"key{j}: value-{rnd.getrandbits(64):x}\n")
PY

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
timed() { # CMD... ; prints seconds
  local start end
  start=$(now)
  "$@" >/dev/null 2>"$work/last.err" || { cat "$work/last.err" >&2; return 1; }
  end=$(now)
  echo "$end - $start" | bc -l
}

printf '%-10s %-9s %-10s %10s %10s %8s\n' case tool step median_s runs speedup
for case in 1mib 50mib 5000files; do
  dir=$work/$case
  size=$(du -sh --apparent-size "$dir" | cut -f1)
  (cd "$dir" && tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$work/$case.tar" .)
  declare -A t=()
  for tool in packsmith crane; do
    for step in fresh repush pull; do t[$tool.$step]=""; done
  done
  for run in $(seq "$RUNS"); do
    repo=$reg/bench/$case-$run
    t[packsmith.fresh]+="$(timed "$PACKSMITH" push -b "$repo-p:v1" -f "$dir" --registry-insecure-host "$reg")"$'\n'
    t[packsmith.repush]+="$(timed "$PACKSMITH" push -b "$repo-p:v1" -f "$dir" --registry-insecure-host "$reg")"$'\n'
    rm -rf "$work/out"
    t[packsmith.pull]+="$(timed "$PACKSMITH" pull -b "$repo-p:v1" -o "$work/out" --registry-insecure-host "$reg")"$'\n'
    t[crane.fresh]+="$(timed "$CRANE" append --insecure -f "$work/$case.tar" -t "$repo-c:v1")"$'\n'
    t[crane.repush]+="$(timed "$CRANE" append --insecure -f "$work/$case.tar" -t "$repo-c:v1")"$'\n'
    rm -f "$work/pulled.tar"
    t[crane.pull]+="$(timed "$CRANE" pull --insecure "$repo-c:v1" "$work/pulled.tar")"$'\n'
  done
  for step in fresh repush pull; do
    p=$(printf '%s' "${t[packsmith.$step]}" | median)
    c=$(printf '%s' "${t[crane.$step]}" | median)
    printf '%-10s %-9s %-10s %10.3f %10s %8s\n' "$case($size)" packsmith "$step" "$p" "$RUNS" \
      "$(echo "scale=1; $c / $p" | bc -l)x"
    printf '%-10s %-9s %-10s %10.3f %10s %8s\n' "$case($size)" crane "$step" "$c" "$RUNS" ""
  done
done
