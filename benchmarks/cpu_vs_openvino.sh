#!/usr/bin/env bash
# The CPU paths against OpenVINO (issue 24): the bundled MiniLM converted to 16384 tokens, then one
# `lsg-export bench --rounds 3` of ONNX Runtime's float32 graphs, the int8 custom-op graph, OpenVINO on the
# gather graph in float32 and bf16 (only where the CPU has native bf16), and what `lsg-export openvino` makes:
# the SDPA graph with float weights (ov-sdpa) and int8 weights (ov-int8), with the quality columns on GPL-3.
# Needs lsg-export with the openvino extra (`bash scripts/setup.sh` installs it) and the custom-op library.
# Idle 2-core machine: ~10 minutes once the exports are cached in $MODEL/bench-exports; the first run also
# converts (~10 s) and makes four exports (~5 minutes).
set -euo pipefail
MODEL=${MODEL:-minilm-16k}
THREADS=${THREADS:-$(nproc)}
[ -d "$MODEL" ] || lsg-export convert -o "$MODEL" --max-sequence-length 16384
lsg-export bench "$MODEL" --seq 4096,16384 --threads "$THREADS" --warmup 1 --repeat 3 --rounds 3 \
  --backends ort-gather,ort-custom-op,ov-f32,ov-bf16,ov-sdpa,ov-mixed,ov-int8,ort-int8-custom-op --json "${JSON:-cpu_vs_openvino.json}"
