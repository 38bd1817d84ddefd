"""The ov-* backends: OpenVINO (the optional `openvino` package, `pip install 'lsg-export[openvino]'`) on the
gather graph of an encoder export, the same ONNX file ort-gather runs, on CPU (openvino/runtime.py).

ov-f32 asks for float32 inference precision (OpenVINO's default on CPUs with bf16 or AMX is bf16); ov-bf16 for
bf16, and runs only where OpenVINO's CPU plugin reports native bf16: both on the gather graph, OpenVINO on the
ONNX file a user has. The others run what `lsg-export openvino` makes, on the SDPA graph (openvino/sdpa.py) at
OpenVINO's default precision for this CPU: ov-sdpa with float weights (--weights none), ov-mixed with float
weights and bf16 written into the graph where harmless (--precision mixed, openvino/mixed_precision.py; CPUs
with native bf16), ov-int8 with int8 weights and activations quantized per group at run time
(openvino/weights.py, also needs `nncf`).
OpenVINO's thread count is the bench's --threads."""
import functools

from ..errors import LSGExportError
from ..openvino.runtime import bf16_support, compile_graph, compile_precision, describe, openvino_missing

PRECISIONS = {"ov-f32": "f32", "ov-bf16": "bf16", "ov-sdpa": None, "ov-mixed": "mixed", "ov-int8": None,
              "ov-int8-keep2": None}  # None: the CPU's default
SDPA = {"ov-sdpa", "ov-mixed", "ov-int8", "ov-int8-keep2"}  # run the SDPA graph (lsg-export openvino's default)
KEEP_FLOAT = {"ov-int8-keep2": 2}  # weights left float (lsg-export openvino --keep-float), ranked when loaded


@functools.lru_cache(maxsize=None)  # asked per backend and round: one OpenVINO Core is enough
def openvino_unavailable(name):
    """(status, reason) when ov-* backend `name` cannot run here, else None."""
    missing = openvino_missing(("openvino", "nncf") if name.startswith("ov-int8") else ("openvino",))
    if missing:
        return "skipped", missing
    if PRECISIONS[name] in ("bf16", "mixed"):
        native, evidence = bf16_support()
        if not native:
            return "not applicable", f"this CPU has no native bf16 ({evidence})"
    return None


def openvino_session(path, threads, name, kept=None):
    """(run, input names, note): run(arrays) runs the graph at `path` as backend `name` compiles it for the
    CPU (int8: with the weights of `kept`, an int8_sensitivity.KeptFloat, left float) and returns its first
    output; the note says what OpenVINO compiled."""
    import openvino as ov
    state = openvino_unavailable(name)
    if state is not None:  # the parent checks this first; a worker asked anyway says why
        raise LSGExportError(state[1])
    graph = str(path)
    int8 = name.startswith("ov-int8")
    if int8:
        from ..openvino.weights import compress_int8
        graph, _ = compress_int8(ov.Core().read_model(graph), keep_float=kept.matmuls if kept else ())
    elif PRECISIONS[name] == "mixed":
        from ..openvino.mixed_precision import explicit_bf16
        graph = ov.Core().read_model(graph)
        explicit_bf16(graph)
    compiled = compile_graph(graph, threads, compile_precision(PRECISIONS[name]))
    request = compiled.create_infer_request()
    output = compiled.outputs[0]
    note = describe(compiled, int8=int8)
    if kept:
        note += f", {len(kept.weights)} weights kept float: {' '.join(kept.weights)}"
    return (lambda arrays: request.infer(arrays)[output]), [port.get_any_name() for port in compiled.inputs], note
