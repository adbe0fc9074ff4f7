#!/usr/bin/env bash
# One command for the log cleaner benchmark; see bench/compaction.py --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../tests/setup.sh" >/dev/null
exec python3 "$here/compaction.py" "$@"
