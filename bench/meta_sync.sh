#!/usr/bin/env bash
# One command for the metadata-sync propagation benchmark; see bench/meta_sync.py --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../tests/setup.sh" >/dev/null
exec python3 "$here/meta_sync.py" "$@"
