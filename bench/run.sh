#!/usr/bin/env bash
# One command for the produce benchmark; see bench/run.py --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../tests/setup.sh" >/dev/null
exec python3 "$here/run.py" "$@"
