#!/usr/bin/env bash
# Benchmark of relocation: `packsmith copy` against crane (go-containerregistry, the library
# imgpkg's copy is built on; imgpkg itself cannot be installed on the bed).
#
# A bundle locking IMAGES images (one layer of incompressible data each, TOTAL_MIB in all) in
# a source registry is copied into a second registry, cold and again (a re-run must send no
# blob), and through a tar (registry → tar → third registry). crane copies the same images one
# `crane copy` each (what a relocation script does), sequentially and 4 at a time; its tar
# path is `crane pull` of every image into one tarball, then `crane push` of each image.
# Reports seconds, the peak RSS of the packsmith process and bytes sent.
#
# usage: benches/copy.sh [PACKSMITH_BIN]     (make bench-copy builds it in release mode)
set -euo pipefail

PACKSMITH=${1:-target/release/packsmith}
CRANE=${CRANE:-$(command -v crane || echo "$HOME/go/bin/crane")}
IMAGES=${IMAGES:-20}
TOTAL_MIB=${TOTAL_MIB:-500}
[[ -x $PACKSMITH ]] || { echo "no packsmith binary at $PACKSMITH" >&2; exit 1; }
[[ -x $CRANE ]] || {
  echo "crane not found: go install github.com/google/go-containerregistry/cmd/crane@v0.22.1" >&2
  exit 1
}
command -v docker-registry >/dev/null || { echo "docker-registry not found (apt-get install docker-registry)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/packsmith-bench-copy.XXXXXX")
export XDG_CACHE_HOME=$work/cache DOCKER_CONFIG=$work/docker
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

registry() { # NAME → prints host:port
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$work/$1.yml" <<EOF
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $work/$1 } }
http: { addr: 127.0.0.1:$port }
EOF
  docker-registry serve "$work/$1.yml" >"$work/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
  echo "127.0.0.1:$port"
}
src=$(registry source)
dst=$(registry target)
air=$(registry airgap)
flags=(--registry-insecure-host "$src" --registry-insecure-host "$dst" --registry-insecure-host "$air")

echo "seeding $IMAGES images ($TOTAL_MIB MiB) into $src ..." >&2
per=$((TOTAL_MIB * 1024 * 1024 / IMAGES))
mkdir -p "$work/bundle/.imgpkg" "$work/bundle/config"
printf -- '---\napiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nimages:\n' >"$work/bundle/.imgpkg/images.yml"
for i in $(seq "$IMAGES"); do
  mkdir -p "$work/layer$i"
  head -c "$per" /dev/urandom >"$work/layer$i/data.bin"
  tar -C "$work/layer$i" -cf "$work/layer$i.tar" data.bin
  rm -rf "$work/layer$i"
  "$CRANE" append --insecure -f "$work/layer$i.tar" -t "$src/bench/img$i:1" >/dev/null 2>&1
  rm -f "$work/layer$i.tar"
  digest=$("$CRANE" digest --insecure "$src/bench/img$i:1")
  printf -- '- image: %s/bench/img%s@%s\n' "$src" "$i" "$digest" >>"$work/bundle/.imgpkg/images.yml"
  echo "$src/bench/img$i@$digest" >>"$work/images.txt"
done
echo "kind: ConfigMap" >"$work/bundle/config/cm.yml"
"$PACKSMITH" push -b "$src/bench/bundle:v1" -f "$work/bundle" "${flags[@]}" >/dev/null

now() { date +%s.%N; }
# CMD... → "seconds peak_rss_kib" of the command (stdout kept in $work/last.out)
measure() {
  local start end
  start=$(now)
  /usr/bin/time -f '%M' -o "$work/rss" "$@" >"$work/last.out" 2>"$work/last.err" || {
    cat "$work/last.err" >&2
    return 1
  }
  end=$(now)
  printf '%.2f %s\n' "$(echo "$end - $start" | bc -l)" "$(tail -1 "$work/rss")"
}
row() { # CASE TOOL "SECONDS RSS" NOTE
  read -r s rss <<<"$3"
  printf '%-28s %-22s %9s %10s  %s\n' "$1" "$2" "$s" "$((rss / 1024)) MiB" "$4"
}
sent() { grep -o '[0-9]* blobs sent ([^)]*)' "$work/last.out" || true; }

crane_copy_all() { # TARGET_REPO PARALLEL
  xargs -P "$2" -I{} sh -c '"$0" copy --insecure "$1" "$2@${1#*@}" >/dev/null 2>&1' "$CRANE" {} "$1" <"$work/images.txt"
}
crane_tar_all() {
  # shellcheck disable=SC2046
  "$CRANE" pull --insecure $(cat "$work/images.txt") "$work/crane.tar" >/dev/null 2>&1
}
crane_push_all() { # one image per tarball: crane push takes one
  local i=0 ref
  while read -r ref; do
    i=$((i + 1))
    "$CRANE" pull --insecure "$ref" "$work/crane$i.tar" >/dev/null 2>&1
    "$CRANE" push --insecure "$work/crane$i.tar" "$air/crane/img$i" >/dev/null 2>&1
    rm -f "$work/crane$i.tar"
  done <"$work/images.txt"
}

# /usr/bin/time runs programs, not functions: crane's loops run in a child bash.
export CRANE work air
export -f crane_copy_all crane_tar_all crane_push_all
printf '%-28s %-22s %9s %10s  %s\n' case tool seconds peak_rss note
r=$(measure "$PACKSMITH" copy -b "$src/bench/bundle:v1" --to-repo "$dst/packsmith" "${flags[@]}")
row "registry→registry cold" "packsmith copy" "$r" "$(sent)"
r=$(measure "$PACKSMITH" copy -b "$src/bench/bundle:v1" --to-repo "$dst/packsmith" "${flags[@]}")
row "registry→registry re-run" "packsmith copy" "$r" "$(sent)"
r=$(measure bash -c 'crane_copy_all "$@"' _ "$dst/crane-seq" 1)
row "registry→registry cold" "crane copy x$IMAGES" "$r" "sequential (rss: largest crane)"
r=$(measure bash -c 'crane_copy_all "$@"' _ "$dst/crane-seq" 1)
row "registry→registry re-run" "crane copy x$IMAGES" "$r" "sequential"
r=$(measure bash -c 'crane_copy_all "$@"' _ "$dst/crane-par" 4)
row "registry→registry cold" "crane copy x$IMAGES -P4" "$r" "4 at a time"

r=$(measure "$PACKSMITH" copy -b "$src/bench/bundle:v1" --to-tar "$work/bundle.tar" "${flags[@]}")
row "registry→tar" "packsmith copy" "$r" "$(du -h "$work/bundle.tar" | cut -f1)"
r=$(measure "$PACKSMITH" copy --tar "$work/bundle.tar" --to-repo "$air/packsmith" "${flags[@]}")
row "tar→registry" "packsmith copy" "$r" "$(sent)"
r=$(measure "$PACKSMITH" copy --tar "$work/bundle.tar" --to-repo "$air/packsmith" "${flags[@]}")
row "tar→registry re-run" "packsmith copy" "$r" "$(sent)"
rm -f "$work/bundle.tar"
r=$(measure bash -c crane_tar_all)
row "registry→tar" "crane pull (1 tar)" "$r" "$(du -h "$work/crane.tar" | cut -f1)"
rm -f "$work/crane.tar"
r=$(measure bash -c crane_push_all)
row "registry→tar→registry" "crane pull+push x$IMAGES" "$r" "one tar per image"
