#!/usr/bin/env bash
# The custom-op library on older ONNX Runtime releases: one throwaway venv per onnxruntime wheel under
# .ci/ort-versions/ (onnxruntime + numpy only, pip's cache reused, kept for the next run), the library built
# once here and a tiny --attention custom-op export run in each against today's onnxruntime. Writes
# custom_ops/ort-versions.json and prints the matrix (docs/deployment.md keeps a copy). Arguments: versions
# to try instead of the default list (a partial run leaves the JSON alone).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD
exec "${PYTHON:-python3}" scripts/ort_versions.py "$@"
