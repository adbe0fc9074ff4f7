#!/usr/bin/env bash
# One command for the region-loss drill benchmark (chronik ctl drill region-loss against
# Kafka + MirrorMaker 2 losing its source); see bench/drill.py --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../tests/setup.sh" >/dev/null
"$here/mm2/fetch.sh" >/dev/null
export CHRONIK_BENCH_ENTRY="bench/drill.sh"
exec python3 "$here/drill.py" "$@"
