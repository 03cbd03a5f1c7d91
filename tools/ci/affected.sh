#!/usr/bin/env bash
# Affected-only runs: test (or lint, check, package) just what a change touches
# plus everything that depends on it. A change to Pants/tool config, a lockfile
# or the build macros changes what every target means, so it runs everything.
#
#   tools/ci/affected.sh                 # test, against origin/main (or main)
#   tools/ci/affected.sh lint check      # other goals
#   BASE=HEAD~3 tools/ci/affected.sh     # another base
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

goals=("$@")
[[ ${#goals[@]} -gt 0 ]] || goals=(test)

if [[ -z "${BASE:-}" ]]; then
  if git rev-parse --verify -q origin/main >/dev/null; then BASE=origin/main; else BASE=main; fi
fi

global_files='^(pants\.toml|pants|ruff\.toml|mypy\.ini|pytest\.ini|VERSION|BUILD|3rdparty/python/.*|tools/pants/.*|pants-plugins/.*|tests/testutil/.*)$'
changed="$( { git diff --name-only "$BASE"...HEAD; git diff --name-only HEAD; git ls-files --others --exclude-standard; } | sort -u)"
if grep -Eq "$global_files" <<<"$changed"; then
  echo "affected: global config changed ($(grep -E "$global_files" <<<"$changed" | tr '\n' ' ')) -> running everything" >&2
  exec ./pants "${goals[@]}" ::
fi
echo "affected: changes since $BASE, with transitive dependents" >&2
exec ./pants --changed-since="$BASE" --changed-dependents=transitive "${goals[@]}"
