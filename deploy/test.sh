#!/usr/bin/env bash
# The second README command: install what is missing, then run the whole test suite.
# The session fixture in tests/conftest.py starts its own Kafka and Redis on test ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
exec python3 -m pytest -p no:cacheprovider "$@"
