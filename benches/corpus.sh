#!/usr/bin/env bash
# The fixture corpus match rate: for every real bundle under testdata/ (the TCE packages and
# testdata/bundles/), does `packsmith lock --list` name exactly the references its publisher's
# kbld recorded (the `kbld.carvel.dev/id`s of its .imgpkg/images.yml)? Contacts no registry.
# Called by benches/lock.sh (`make bench-lock`); runs alone too, and takes other directories of
# bundles as arguments (`bash benches/corpus.sh DIR…`, e.g. a local corpus of bundles whose
# licenses do not allow committing them here). Prints figures; never fails on a bundle: a
# refused one is reported with packsmith's reason.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PACKSMITH=${PACKSMITH:-$ROOT/target/release/packsmith}
[[ -x $PACKSMITH ]] || { echo "corpus: $PACKSMITH missing (cargo build --release)"; exit 1; }

WORK=$(mktemp -d /tmp/packsmith-corpus.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# The ids as kbld writes them: `    kbld.carvel.dev/id: VALUE`, VALUE plain or quoted.
recorded_ids() {
  sed -nE 's/^ *kbld\.carvel\.dev\/id: *//p' "$1" | sed -E "s/^'(.*)'\$/\\1/; s/^\"(.*)\"\$/\\1/" | sort -u
}

total=0 matched=0 elapsed=0
declare -a MISSES
while IFS= read -r lock; do
  bundle=${lock%/.imgpkg/images.yml}
  name=${bundle#"$ROOT"/}
  total=$((total + 1))
  recorded_ids "$lock" >"$WORK/recorded"
  start=$(date +%s%N)
  if ! "$PACKSMITH" lock --list -f "$bundle" 2>"$WORK/err" >"$WORK/listed"; then
    MISSES+=("$name (refused: $(head -c 200 "$WORK/err"))")
    continue
  fi
  elapsed=$((elapsed + $(date +%s%N) - start))
  sort -u "$WORK/listed" >"$WORK/found"
  if cmp -s "$WORK/recorded" "$WORK/found"; then
    matched=$((matched + 1))
  else
    missing=$(comm -23 "$WORK/recorded" "$WORK/found" | wc -l)
    extra=$(comm -13 "$WORK/recorded" "$WORK/found" | wc -l)
    MISSES+=("$name (recorded but not found: $missing, found but not recorded: $extra)")
  fi
done < <(find "${@:-$ROOT/testdata}" -path '*/.imgpkg/images.yml' | sort)

echo
echo "fixture corpus: $total real bundles, \`lock --list\` equals the recorded lock for $matched" \
  "($(awk -v m="$matched" -v t="$total" 'BEGIN {printf "%.0f", t ? 100 * m / t : 0}')%)," \
  "$(awk -v n="$elapsed" 'BEGIN {printf "%.0f", n / 1e6}') ms for all of them"
for miss in "${MISSES[@]}"; do
  echo "  differs: $miss"
done
[[ ${#MISSES[@]} == 0 ]] || echo "  (testdata/README.md explains the differences of the bundles examined for this repository)"
