"""OpenVINO on the gather graph with its own int8: weights compressed by NNCF (INT8_ASYM / INT8_SYM) and, with a
group size, the activations quantized per group at run time (DYNAMIC_QUANTIZATION_GROUP_SIZE), against ONNX
Runtime's float32 output on the first 4096 tokens of GPL-3 encoded as the tokenizer does ([CLS] ... [SEP]).

    python benchmarks/openvino_int8.py GATHER_EXPORT none:bf16:0,INT8_ASYM:bf16:32,INT8_SYM:bf16:0

Each item: weight compression mode (none, or an nncf.CompressWeightsMode name), inference precision (f32 or
bf16), dynamic quantization group size (0: off). Prints the mean-pooled and lowest per-token cosine and the
median of 5 runs (2 threads). Needs openvino and nncf.
"""
import statistics
import sys
import time

from int8_sensitivity import cosines, feeds_for, session, timed


def main():
    import nncf
    import openvino as ov
    export, configs = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "none:bf16:0"
    reference_session = session(f"{export}/model.onnx", 2)
    feeds = feeds_for(export, "/usr/share/common-licenses/GPL-3", 4096, reference_session)
    reference, float_ms = timed(reference_session, feeds, 3)
    del reference_session
    print(f"onnxruntime float32 {float_ms:.1f} ms", flush=True)
    core = ov.Core()
    for config in configs.split(","):
        mode, precision, group = config.split(":")
        model = core.read_model(f"{export}/model.onnx")
        if mode != "none":
            model = nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, mode))
        properties = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY"}
        if group != "0":
            properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = int(group)
        compiled = core.compile_model(model, "CPU", properties)
        request = compiled.create_infer_request()
        inputs = {port.get_any_name(): feeds[port.get_any_name()] for port in compiled.inputs}
        output = next(port for port in compiled.outputs if "last_hidden_state" in port.get_names())
        request.infer(inputs)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            request.infer(inputs)
            times.append(time.perf_counter() - start)
        pooled, lowest = cosines(reference, request.get_tensor(output).data.copy())
        print(f"{config}: pooled {pooled:.6f} lowest {lowest:.5f} {statistics.median(times) * 1000:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
