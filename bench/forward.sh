#!/usr/bin/env bash
# One command for the write-forwarding benchmark (an eu-west producer through
# forwarding vs the same producer straight to us-east across wan-sim); see
# bench/forward.py --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../tests/setup.sh" >/dev/null
export CHRONIK_BENCH_ENTRY="bench/forward.sh"
exec python3 "$here/forward.py" "$@"
