#!/usr/bin/env bash
# `make bench-sync`: packsmith sync against its peers on the same local upstreams (vendir is not
# installable here, so the peers are what vendir shells out to: `git clone --depth 1` and
# `curl | tar`). Cold = empty target and cache; warm = nothing changed upstream since the last
# sync (packsmith then only asks the upstream for its identity and stats the target; see
# src/sync/warm.rs). Prints the median of RUNS runs per case. Not a test: it asserts nothing.
#
# Uses the bed named by PACKSMITH_E2E_ENV, or starts (and stops) one.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUNS="${RUNS:-5}"
FILES="${FILES:-5000}"
PACKSMITH="${PACKSMITH:-$ROOT/target/release/packsmith}"

owned=""
if [[ -z "${PACKSMITH_E2E_ENV:-}" ]]; then
  owned="$(mktemp -d /tmp/packsmith-bench-XXXXXX)"
  bash "$ROOT/e2e/scripts/up.sh" "$owned" >&2
  PACKSMITH_E2E_ENV="$owned/env"
fi
# shellcheck disable=SC1090
set -a; source "$PACKSMITH_E2E_ENV"; set +a
work="$(mktemp -d /tmp/packsmith-bench-work-XXXXXX)"
cleanup() {
  rm -rf "$work"
  if [[ -n "$owned" ]]; then bash "$ROOT/e2e/scripts/down.sh" "$owned" >&2 || true; fi
}
trap cleanup EXIT

# --- upstreams: one tree of $FILES files (~6 KiB each) as a git tag and as a .tgz ----------
src="$work/src"
mkdir -p "$src"
python3 - "$src" "$FILES" <<'EOF'
import os, random, sys
root, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
for i in range(count):
    d = os.path.join(root, f"dir{i % 50:02d}", f"sub{i % 7}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"file{i:05d}.yaml"), "w") as f:
        f.write("".join(rng.choice("abcdefgh \n") for _ in range(6000)))
EOF
git -C "$src" -c init.defaultBranch=main init -q .
git -C "$src" add -A
git -C "$src" -c user.name=bench -c user.email=bench@packsmith.dev commit -q -m "bench tree"
git -C "$src" tag v1.0.0
bare="$PACKSMITH_E2E_GIT_DIR/bench-sync.git"
rm -rf "$bare"
git init -q --bare "$bare"
git -C "$src" push -q "$bare" main --tags
mkdir -p "$PACKSMITH_E2E_WWW_DIR/bench"
tar -C "$src" --exclude .git -czf "$PACKSMITH_E2E_WWW_DIR/bench/tree.tgz" .
git_url="$PACKSMITH_E2E_GIT_URL/bench-sync.git"
tgz_url="$PACKSMITH_E2E_HTTP_URL/bench/tree.tgz"

# A Helm repository: index.yaml + one chart of CHART_FILES templates, packaged as helm does
# (a single top directory named after the chart).
CHART_FILES="${CHART_FILES:-500}"
chart_src="$work/chart-src/bench"
mkdir -p "$chart_src/templates"
printf 'apiVersion: v2\nname: bench\nversion: 1.0.0\nappVersion: "1.0"\n' >"$chart_src/Chart.yaml"
printf 'replicas: 1\n' >"$chart_src/values.yaml"
for i in $(seq "$CHART_FILES"); do
  printf 'kind: ConfigMap\nmetadata: {name: cm-%s}\ndata: {v: "%s"}\n' "$i" "$i" >"$chart_src/templates/cm-$i.yaml"
done
mkdir -p "$PACKSMITH_E2E_WWW_DIR/bench-helm"
tar -C "$work/chart-src" -czf "$PACKSMITH_E2E_WWW_DIR/bench-helm/bench-1.0.0.tgz" bench
chart_sum="$(sha256sum "$PACKSMITH_E2E_WWW_DIR/bench-helm/bench-1.0.0.tgz" | cut -d' ' -f1)"
printf 'apiVersion: v1\nentries:\n  bench:\n  - version: 1.0.0\n    urls: [bench-1.0.0.tgz]\n    digest: %s\n' \
  "$chart_sum" >"$PACKSMITH_E2E_WWW_DIR/bench-helm/index.yaml"
helm_url="$PACKSMITH_E2E_HTTP_URL/bench-helm"

cat >"$work/git.yml" <<EOF
apiVersion: vendir.k14s.io/v1alpha1
kind: Config
directories:
- path: out
  contents:
  - path: .
    git: {url: "$git_url", ref: v1.0.0}
EOF
cat >"$work/http.yml" <<EOF
apiVersion: vendir.k14s.io/v1alpha1
kind: Config
directories:
- path: out
  contents:
  - path: .
    http: {url: "$tgz_url"}
EOF

cat >"$work/helm.yml" <<EOF
apiVersion: vendir.k14s.io/v1alpha1
kind: Config
directories:
- path: out
  contents:
  - path: .
    helmChart: {name: bench, version: 1.0.0, repository: {url: "$helm_url"}}
EOF

now() { date +%s.%N; }
# median SECONDS... of a command run RUNS times, with `prepare` run untimed before each.
measure() {
  local prepare="$1" cmd="$2" times=()
  for _ in $(seq "$RUNS"); do
    eval "$prepare"
    local start end
    start=$(now)
    eval "$cmd" >/dev/null 2>&1
    end=$(now)
    times+=("$(echo "$end - $start" | bc)")
  done
  printf '%s\n' "${times[@]}" | sort -n | sed -n "$(((RUNS + 1) / 2))p"
}
report() { printf '%-34s %8.3f s\n' "$1" "$2"; }

d="$work/run"
echo "sync benchmark: $FILES files, $(du -sh "$src" --exclude .git | cut -f1), median of $RUNS runs"
report "git cold: packsmith" "$(measure "rm -rf $d $work/cache; mkdir -p $d" \
  "$PACKSMITH sync --chdir $d -f $work/git.yml --no-cache")"
report "git cold: git clone --depth 1" "$(measure "rm -rf $d" \
  "git clone -q --depth 1 --branch v1.0.0 $git_url $d")"
report "git warm: packsmith (cache)" "$(measure "mkdir -p $d; $PACKSMITH sync --chdir $d -f $work/git.yml --cache-dir $work/cache >/dev/null 2>&1 || true" \
  "$PACKSMITH sync --chdir $d -f $work/git.yml --cache-dir $work/cache")"
report "git warm: git fetch + checkout" "$(measure "rm -rf $d; git clone -q --depth 1 --branch v1.0.0 $git_url $d" \
  "git -C $d fetch -q --depth 1 origin tag v1.0.0 && git -C $d -c advice.detachedHead=false checkout -q v1.0.0")"
report "http cold: packsmith" "$(measure "rm -rf $d $work/cache; mkdir -p $d" \
  "$PACKSMITH sync --chdir $d -f $work/http.yml --no-cache")"
report "http cold: curl | tar" "$(measure "rm -rf $d; mkdir -p $d" \
  "curl -sf $tgz_url | tar -C $d -xz")"
report "http warm: packsmith (cache)" "$(measure "mkdir -p $d; $PACKSMITH sync --chdir $d -f $work/http.yml --cache-dir $work/cache >/dev/null 2>&1 || true" \
  "$PACKSMITH sync --chdir $d -f $work/http.yml --cache-dir $work/cache")"
report "http warm: curl --etag (304)" "$(measure "rm -rf $d; mkdir -p $d; curl -sf --etag-save $work/etag $tgz_url | tar -C $d -xz" \
  "curl -sf --etag-compare $work/etag --etag-save $work/etag $tgz_url | tar -C $d -xz || true")"
report "helm cold: packsmith" "$(measure "rm -rf $d $work/cache; mkdir -p $d" \
  "$PACKSMITH sync --chdir $d -f $work/helm.yml --no-cache")"
report "helm cold: curl index + curl | tar" "$(measure "rm -rf $d; mkdir -p $d" \
  "curl -sf $helm_url/index.yaml >/dev/null && curl -sf $helm_url/bench-1.0.0.tgz | tar -C $d -xz --strip-components 1")"
report "helm warm: packsmith (cache)" "$(measure "mkdir -p $d; $PACKSMITH sync --chdir $d -f $work/helm.yml --cache-dir $work/cache >/dev/null 2>&1 || true" \
  "$PACKSMITH sync --chdir $d -f $work/helm.yml --cache-dir $work/cache")"
report "helm warm: curl --etag (304) x2" "$(measure "rm -rf $d; mkdir -p $d; curl -sf --etag-save $work/ietag $helm_url/index.yaml >/dev/null; curl -sf --etag-save $work/cetag $helm_url/bench-1.0.0.tgz | tar -C $d -xz --strip-components 1" \
  "curl -sf --etag-compare $work/ietag --etag-save $work/ietag $helm_url/index.yaml >/dev/null; curl -sf --etag-compare $work/cetag --etag-save $work/cetag $helm_url/bench-1.0.0.tgz | tar -C $d -xz --strip-components 1 || true")"
