#!/usr/bin/env bash
# One command for the cross-region mirroring benchmark (Chronik dc-link vs Kafka
# MirrorMaker 2 through `chronik wan-sim`); see bench/dclink.py --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../tests/setup.sh" >/dev/null
"$here/mm2/fetch.sh" >/dev/null
export CHRONIK_BENCH_ENTRY="bench/dclink.sh"
exec python3 "$here/dclink.py" "$@"
