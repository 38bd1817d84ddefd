"""The ov-* backends: OpenVINO (the optional `openvino` package, `pip install lsg-export[openvino]`) on the
gather graph of an encoder export, the same ONNX file ort-gather runs, on CPU.

ov-f32 asks for float32 inference precision (OpenVINO's default on CPUs with bf16 or AMX is bf16); ov-bf16 for
bf16, and runs only where OpenVINO's CPU plugin reports native bf16 (OPTIMIZATION_CAPABILITIES holds "BF16":
AVX512-BF16 or AMX), since elsewhere OpenVINO would either refuse it or emulate it, and neither is what a user
on such a CPU gets. OpenVINO's thread count is the bench's --threads (INFERENCE_NUM_THREADS)."""
import functools
import importlib.util

from ..errors import LSGExportError

INSTALL_HINT = "pip install 'lsg-export[openvino]'"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # the Linux cpu flags of native bf16 arithmetic


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_capabilities():
    """OpenVINO's CPU plugin's OPTIMIZATION_CAPABILITIES (e.g. FP32, INT8, BF16), as a list of strings."""
    import openvino as ov
    return [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def bf16_support():
    """(native, why): whether OpenVINO runs bf16 natively on this CPU, and the evidence in words."""
    capabilities = cpu_capabilities()
    flags = sorted(cpu_flags() & set(BF16_FLAGS))
    evidence = (f"OpenVINO's CPU capabilities {', '.join(capabilities)}; cpu flags "
                f"{', '.join(flags) if flags else 'without ' + ' / '.join(BF16_FLAGS)}")
    return "BF16" in capabilities, evidence


@functools.lru_cache(maxsize=None)  # asked per backend and round: one OpenVINO Core is enough
def openvino_unavailable(bf16):
    """(status, reason) when an ov-* backend cannot run here, else None."""
    if importlib.util.find_spec("openvino") is None:
        return "skipped", f"openvino is not installed ({INSTALL_HINT})"
    if bf16:
        native, evidence = bf16_support()
        if not native:
            return "not applicable", f"this CPU has no native bf16 ({evidence})"
    return None


def compile_graph(path, threads, bf16):
    """The ONNX graph at `path` compiled by OpenVINO for the CPU at the precision and thread count asked."""
    import openvino as ov
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
              "PERFORMANCE_HINT": "LATENCY"}
    return core.compile_model(core.read_model(str(path)), "CPU", config)


def openvino_session(path, threads, bf16):
    """(run, input names, note): run(arrays) runs the graph at `path` compiled for the CPU and returns its first
    output; the note says what OpenVINO compiled (version, inference precision, threads)."""
    import openvino as ov
    state = openvino_unavailable(bf16)
    if state is not None:  # the parent checks this first; a worker asked anyway says why
        raise LSGExportError(state[1])
    try:
        compiled = compile_graph(path, threads, bf16)
    except Exception as error:
        raise LSGExportError(f"OpenVINO cannot compile {path} ({str(error).strip().splitlines()[0]})") from None
    request = compiled.create_infer_request()
    output = compiled.outputs[0]
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # what it compiled to: f32, bf16
    note = (f"OpenVINO {ov.get_version().split('-')[0]}, inference precision {precision}, "
            f"threads {compiled.get_property('INFERENCE_NUM_THREADS')}")
    return (lambda arrays: request.infer(arrays)[output]), [port.get_any_name() for port in compiled.inputs], note
