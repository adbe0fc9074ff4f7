#!/usr/bin/env bash
# One command for the failover recovery-time benchmark; see bench/failover.py --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../tests/setup.sh" >/dev/null
exec python3 "$here/failover.py" "$@"
