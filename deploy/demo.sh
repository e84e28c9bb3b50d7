#!/usr/bin/env bash
# The first README command: install what is missing, start the embedded bus, run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
exec carebus demo "$@"
