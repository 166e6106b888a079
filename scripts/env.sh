#!/usr/bin/env bash
# Create (or reuse) the local virtual environment .venv and install dlforge into it.
# Usage: source scripts/env.sh        (DLFORGE_EXTRAS=dev source scripts/env.sh adds the dev extras)
# torch is pinned by constraints.txt (2.13.0, the CPU build on the development machines).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
extras="${DLFORGE_EXTRAS:-}"
target="."
[ -n "$extras" ] && target=".[$extras]"
stamp=".venv/.dlforge-installed-${extras:-core}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e "$target"
  touch "$stamp"
fi
