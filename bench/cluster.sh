#!/usr/bin/env bash
# One command for the three-broker cluster benchmark; see bench/cluster.py --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../tests/setup.sh" >/dev/null
export CHRONIK_BENCH_ENTRY="bench/cluster.sh"
exec python3 "$here/cluster.py" "$@"
