#!/usr/bin/env bash
# One command for the transactional throughput benchmark; see bench/transactions.py --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../tests/setup.sh" >/dev/null
exec python3 "$here/transactions.py" "$@"
