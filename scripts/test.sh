#!/usr/bin/env bash
# Set up .venv with the dev extras and run the whole test suite (slow tests: add `-m slow`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DLFORGE_EXTRAS=dev source scripts/env.sh
exec .venv/bin/python -m pytest -q "$@"
