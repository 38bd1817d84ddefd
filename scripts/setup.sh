#!/usr/bin/env bash
# Install lsg-export and what it needs into the current Python (a venv if one is active).
# torch is pinned to the local CPU build first so that pip never pulls the CUDA wheels here;
# on a GPU machine set TORCH_SPEC (e.g. TORCH_SPEC=torch) and EXTRAS=gpu,test,optimum.
# [optimum] (optimum + optimum-onnx, which caps transformers below 4.58 today) gives load_ort_model, the
# merged decoder and the ORTModel checks; EXTRAS=cpu,test installs without it (any transformers >= 4.50).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
"$PY" -m pip install -q -e ".[${EXTRAS:-cpu,test,optimum}]"
# the custom-op library (CMake Release build, cached; ONNX Runtime headers fetched once with npm pack)
"$PY" -m lsg_export.cli build-ops
