#!/usr/bin/env bash
# Set up and run the test suite (CPU; GPU tests skip without a GPU), on two pytest-xdist workers:
#   bash scripts/test.sh                  the full suite (under 10 minutes on 2 cores)
#   bash scripts/test.sh -m quick         the quick tier: every command once (under 3 minutes)
#   bash scripts/test.sh -m exhaustive    every family x head export beyond the full suite's covering set
# PYTEST_WORKERS=1 runs in one process (e.g. for a single -k test: no worker start-up);
# LSG_SETUP_DONE=1 skips the set-up (.ci/run sets up once, then runs the tiers).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${LSG_SETUP_DONE:-0}" != 1 ]; then bash scripts/setup.sh; fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
workers=${PYTEST_WORKERS:-2}
xdist=()
if [ "$workers" != 1 ]; then xdist=(-n "$workers" --dist loadgroup); fi
exec "${PYTHON:-python3}" -m pytest -q -p no:benchmark "${xdist[@]}" "$@"
