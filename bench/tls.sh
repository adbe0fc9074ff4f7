#!/usr/bin/env bash
# One command for the TLS-cost benchmark; see bench/tls.py --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../tests/setup.sh" >/dev/null
exec python3 "$here/tls.py" "$@"
