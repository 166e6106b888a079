#!/usr/bin/env bash
# Set up .venv and run the main job: train a small GPT on tiny Shakespeare and sample from it.
# Extra arguments go to `dlforge demo`, e.g. `bash scripts/demo.sh --minutes 1`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
exec .venv/bin/dlforge demo "$@"
