#!/usr/bin/env bash
# Set up and run the main job on the bundled all-MiniLM-L6-v2: convert it to LSG at 4096 tokens
# and run it on a real long document.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-lsg-all-MiniLM-L6-v2-4096}
lsg-export convert -o "$OUT" --force
"${PYTHON:-python3}" scripts/run_document.py "$OUT" /usr/share/common-licenses/GPL-3
