#!/usr/bin/env bash
# Install lsg-export and what it needs into the current Python (a venv if one is active).
# torch is pinned to the local CPU build first so that pip never pulls the CUDA wheels here;
# on a GPU machine set TORCH_SPEC (e.g. TORCH_SPEC=torch) and EXTRAS=gpu,test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
"$PY" -m pip install -q -e ".[${EXTRAS:-cpu,test}]"
# the custom-op library (CMake Release build, cached; ONNX Runtime headers fetched once with npm pack)
"$PY" -m lsg_export.cli build-ops
