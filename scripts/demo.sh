#!/usr/bin/env bash
# Set up and run the main job on the bundled all-MiniLM-L6-v2: convert it to LSG at 8192 tokens and run
# it on a real long document, all of it: the GPL-3 text, 6842 tokens with MiniLM's tokenizer (a document
# longer than LENGTH is cut to its first LENGTH tokens, and run_document.py says so).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LENGTH=${LENGTH:-8192}
DOCUMENT=${DOCUMENT:-/usr/share/common-licenses/GPL-3}
OUT=${OUT:-lsg-all-MiniLM-L6-v2-$LENGTH}
lsg-export convert -o "$OUT" --max-sequence-length "$LENGTH" --force
"${PYTHON:-python3}" scripts/run_document.py "$OUT" "$DOCUMENT"
