#!/usr/bin/env bash
# Download benchmark: kmm vs huggingface_hub (latest, HF_HUB_DISABLE_XET=1) vs curl against the
# project's fake hub (release build, LFS bytes from its own CDN port). Prints medians, peak RSS,
# ratios, a per-connection bandwidth-cap case and a SIGKILL-at-50% resume case.
#
#   bench/downloads.sh [--big-mib 2048] [--small-count 200] [--rounds 3] [--warmup 1] [--capped-mib 512]
#                       [--cases big,small,capped,resume] ...
#
# Arguments are passed to bench/downloads.py. Work files (generated data, venv, runs) live in
# $KMM_BENCH_DIR (default: target/bench). Needs: cargo, python3 with venv, curl, /usr/bin/time.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
work="${KMM_BENCH_DIR:-$target/bench}"
mkdir -p "$work"

if [ ! -x /usr/bin/time ]; then
    echo "installing GNU time for peak RSS" >&2
    apt-get install -y time >/dev/null
fi

echo "building release binaries ..." >&2
(cd "$repo" && cargo build --release --bin kmm --example fake_hub >&2)

venv="$work/venv"
if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with the latest huggingface_hub ..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip >&2
fi
"$venv/bin/pip" install --quiet --upgrade huggingface_hub >&2

exec python3 "$repo/bench/downloads.py" \
    --kmm "$target/release/kmm" \
    --fake-hub "$target/release/examples/fake_hub" \
    --python "$venv/bin/python" \
    --work "$work" \
    "$@"
