"""ONNX Runtime's MatMulNBits on a float32 export: 8- or 4-bit weights in blocks along K, and with accuracy_level 4
the activations quantized to int8 per block too (instead of one step for the whole tensor, as `--quantize int8`).

For a float32 `lsg-export onnx` folder, quantizes every MatMul with each BITS:BLOCK:LEVEL of the list and reports
the mean-pooled and lowest per-token cosine of last_hidden_state to the float32 graph's on the first 4096 tokens of
GPL-3, with the median time of 5 runs (one session at a time) beside the float32 graph's.

    python benchmarks/int8_blockwise.py minilm-onnx-o2 8:32:4,8:128:4,8:32:0
"""
import sys
import tempfile
from pathlib import Path

import onnx
from int8_sensitivity import cosines, feeds_for, session, timed


def main():
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    export, configs = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "8:32:4"
    model_path = export / "model.onnx"
    reference_session = session(model_path, 2)
    feeds = feeds_for(export, "/usr/share/common-licenses/GPL-3", 4096, reference_session)
    reference, float_ms = timed(reference_session, feeds, 3)
    del reference_session
    with tempfile.TemporaryDirectory() as tmp:
        for bits, block, level in ([int(x) for x in c.split(":")] for c in configs.split(",")):
            config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=level, bits=bits)
            quantizer = MatMulNBitsQuantizer(onnx.load(str(model_path)), bits=bits, block_size=block, is_symmetric=True,
                                             accuracy_level=level, algo_config=config)
            quantizer.process()
            quantizer.model.save_model_to_file(f"{tmp}/model.onnx", False)
            output, ms = timed(session(f"{tmp}/model.onnx", 2), feeds, 5)
            pooled, lowest = cosines(reference, output)
            print(f"bits {bits} block {block} accuracy_level {level}: pooled {pooled:.6f} lowest {lowest:.5f} "
                  f"{ms:.1f} ms (float32 {float_ms:.1f} ms)", flush=True)


if __name__ == "__main__":
    main()
