#!/usr/bin/env bash
# The main job, without the Hugging Face Hub: serve the bundled fixture repos (examples/hub/) with
# the project's fake hub on 127.0.0.1, then plan + apply examples/demo/kari-models.toml against
# it as a mirror, and show that a second plan has nothing to do.
#
#   ./examples/demo.sh [WORK_DIR]     (default: a fresh temporary directory)
set -euo pipefail
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d -t kmm-demo.XXXXXX)}"
mkdir -p "$work"

cd "$repo_root"
cargo build --quiet --bin kmm --example fake_hub --example library_api
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
kmm="$target_dir/debug/kmm"

hub_log="$work/fake-hub.log"
"$target_dir/debug/examples/fake_hub" --root "$repo_root/examples/hub" --port 0 >"$hub_log" 2>&1 &
hub_pid=$!
trap 'kill $hub_pid 2>/dev/null || true' EXIT
endpoint=""
for _ in $(seq 1 100); do
  endpoint="$(sed -n 's/^endpoint=//p' "$hub_log" | head -n 1)"
  [ -n "$endpoint" ] && break
  sleep 0.1
done
[ -n "$endpoint" ] || { echo "fake hub did not start:"; cat "$hub_log"; exit 1; }
echo "fake hub: $endpoint  (work dir: $work)"

cp "$repo_root/examples/demo/kari-models.toml" "$work/kari-models.toml"
cd "$work"
echo; echo "== kmm plan"
set +e; "$kmm" --mirror "$endpoint" plan --detailed-exitcode; code=$?; set -e
[ "$code" -eq 2 ] || { echo "expected exit 2 (changes) from the first plan, got $code"; exit 1; }
echo; echo "== kmm apply"
"$kmm" --mirror "$endpoint" apply
echo; echo "== kmm plan (again)"
"$kmm" --mirror "$endpoint" plan --detailed-exitcode
echo; echo "== models/"
find models -path models/.kmm -prune -o -type f -print | sort
echo; echo "== kmm list / info against the same hub"
"$kmm" --mirror "$endpoint" list --owner acme
"$kmm" --mirror "$endpoint" info --model acme/tiny-bert
echo; echo "== examples/library_api.rs (the library API) against the same hub"
"$target_dir/debug/examples/library_api" --endpoint "$endpoint" --models-dir "$work/api-models" \
  --model TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF
