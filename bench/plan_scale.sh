#!/usr/bin/env bash
# Plan-at-scale benchmark: `kmm plan --offline` (release build) on a generated store of 10,000
# installed models / 200,000 files, side by side with
# `find models -type f -printf '%s %T@\n' > /dev/null` on the same tree. Prints the median of
# each over N warm rounds, the ratio (target: kmm <= 3x find) and kmm's peak RSS (target:
# < 200 MiB, from GNU time).
#
#   bench/plan_scale.sh [--models 10000] [--files-per-model 20] [--rounds 5] [--regenerate]
#                       [--from lock|registry]
#
# --from lock (default): `kmm plan --offline --locked` resolves from kari-models.lock.
# --from registry: the lock is moved away before each run, so kmm resolves from the registry
# alone (and writes the lock again, which is part of what is timed); it is restored at the end.
#
# Work files live in $KMM_BENCH_DIR (default: target/bench/scale). Needs: cargo, python3,
# GNU find and /usr/bin/time.
set -euo pipefail

models=10000
files_per_model=20
rounds=5
regenerate=0
from=lock
while [ $# -gt 0 ]; do
    case "$1" in
        --models) models="$2"; shift 2 ;;
        --files-per-model) files_per_model="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --regenerate) regenerate=1; shift ;;
        --from) from="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
work="${KMM_BENCH_DIR:-$target/bench/scale}/${models}x${files_per_model}"

if [ ! -x /usr/bin/time ]; then
    echo "installing GNU time for peak RSS" >&2
    apt-get install -y time >/dev/null
fi

echo "building the release binary ..." >&2
(cd "$repo" && cargo build --release --bin kmm >&2)
kmm="$target/release/kmm"

if [ "$regenerate" = 1 ] || [ ! -f "$work/kari-models.lock" ]; then
    rm -rf "$work"
    echo "generating $models models x $files_per_model files in $work ..." >&2
    python3 "$repo/bench/gen_store.py" "$work" --models "$models" --files-per-model "$files_per_model"
fi
cd "$work"

# Seconds of wall time of one run of "$@", output discarded.
seconds() {
    local start end
    start=$(date +%s.%N)
    "$@" > /dev/null
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}

median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

run_find() { find models -type f -printf '%s %T@\n'; }
case "$from" in
    lock) run_kmm() { "$kmm" plan --offline --locked -q; } ;;
    registry)
        cp kari-models.lock "$work/lock.saved"
        trap 'cp "$work/lock.saved" "$work/kari-models.lock"' EXIT
        run_kmm() { rm -f kari-models.lock; "$kmm" plan --offline -q; }
        ;;
    *) echo "--from takes lock or registry" >&2; exit 2 ;;
esac

# Warm the page cache and check that the store plans clean.
run_find > /dev/null
if ! "$kmm" plan --offline --locked --detailed-exitcode > "$work/plan.txt" 2>&1; then
    echo "kmm plan is not empty or failed on the generated store:" >&2
    tail -n 20 "$work/plan.txt" >&2
    exit 1
fi

find_times=()
kmm_times=()
for _ in $(seq "$rounds"); do
    find_times+=("$(seconds run_find)")
    kmm_times+=("$(seconds run_kmm)")
done
find_median=$(printf '%s\n' "${find_times[@]}" | median)
kmm_median=$(printf '%s\n' "${kmm_times[@]}" | median)
if [ "$from" = registry ]; then rm -f kari-models.lock; fi
rss_kib=$(/usr/bin/time -v "$kmm" plan --offline $([ "$from" = lock ] && echo --locked) -q 2>&1 >/dev/null \
    | awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }')
file_count=$(run_find | wc -l)

printf 'store:        %s models, %s files (%s), resolved from the %s\n' "$models" "$file_count" "$work" "$from"
printf 'find:         %.3f s (median of %s: %s)\n' "$find_median" "$rounds" "${find_times[*]}"
printf 'kmm plan:     %.3f s (median of %s: %s)\n' "$kmm_median" "$rounds" "${kmm_times[*]}"
printf 'ratio:        %.2fx find (target <= 3x)\n' "$(echo "$kmm_median / $find_median" | bc -l)"
printf 'peak RSS:     %.1f MiB (target < 200 MiB)\n' "$(echo "$rss_kib / 1024" | bc -l)"
