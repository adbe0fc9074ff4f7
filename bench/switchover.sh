#!/usr/bin/env bash
# One command for the switchover write-pause benchmark; see bench/switchover.py --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../tests/setup.sh" >/dev/null
exec python3 "$here/switchover.py" "$@"
