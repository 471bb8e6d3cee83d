#!/usr/bin/env bash
# Pull request job: plan against the committed kari-models.lock and write the review comment.
#
# Writes, in the current directory:
#   kmm-plan.md       the markdown comment (first line `<!-- kmm-plan -->`, so a bot can update it)
#   kmm-plan.json     the saved plan (an artifact: `kmm show kmm-plan.json`)
#   kmm-plan.outcome  `changes` or `no-changes`
# Exits non-zero when planning fails, e.g. E_SCHEMA when the lock does not match the manifest
# (run `kmm lock` and commit kari-models.lock).
#
# Needs `kmm` on PATH; the hub or mirror comes from HF_ENDPOINT, the token from HF_TOKEN.
set -euo pipefail
set +e
kmm plan --locked --detailed-exitcode --format markdown --diff --out kmm-plan.json >kmm-plan.md
code=$?
set -e
case "$code" in
  0) echo no-changes >kmm-plan.outcome ;;
  2) echo changes >kmm-plan.outcome ;;
  *) echo "kmm plan failed with exit code $code" >&2; exit "$code" ;;
esac
echo "kmm plan: $(cat kmm-plan.outcome)"
