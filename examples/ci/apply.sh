#!/usr/bin/env bash
# Merge job: apply the merged manifest exactly as locked (no resolution against the hub's
# moving branches), then check that the store converged.
#
# Needs `kmm` on PATH; the hub or mirror comes from HF_ENDPOINT, the token from HF_TOKEN.
set -euo pipefail
kmm apply --frozen --json >kmm-apply.json
kmm plan --frozen --detailed-exitcode >/dev/null
echo "kmm apply: converged"
