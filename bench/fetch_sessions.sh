#!/usr/bin/env bash
# One command for the fetch-session CPU benchmark; see bench/fetch_sessions.py --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../tests/setup.sh" >/dev/null
exec python3 "$here/fetch_sessions.py" "$@"
