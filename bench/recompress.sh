#!/usr/bin/env bash
# One command for the compression.type CPU benchmark; see bench/recompress.py --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../tests/setup.sh" >/dev/null
exec python3 "$here/recompress.py" "$@"
