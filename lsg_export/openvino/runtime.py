"""OpenVINO's CPU plugin: native bf16 or not, and a graph compiled at a precision and thread count.

OpenVINO's default inference precision on CPUs with native bf16 (AVX512-BF16 or AMX) is bf16, float32
elsewhere; a precision asked where the CPU has no native bf16 would be emulated, which is not what a user on
such a CPU gets, so bf16 is offered only where OPTIMIZATION_CAPABILITIES holds "BF16"."""
import importlib.util

from ..errors import LSGExportError

INSTALL_HINT = "pip install 'lsg-export[openvino]'"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # the Linux cpu flags of native bf16 arithmetic


def openvino_missing(packages=("openvino",)):
    """The line saying what is missing of `packages`, or None when all are installed."""
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed ({INSTALL_HINT})" \
        if missing else None


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


PRECISIONS = ("auto", "f32", "bf16", "mixed")  # lsg-export openvino --precision; mixed: mixed_precision.py


def compile_precision(precision):
    """The INFERENCE_PRECISION_HINT a graph at `precision` compiles with: mixed carries its bf16 in the graph and
    compiles at f32 (bf16 would lower its float32 nodes too)."""
    return "f32" if precision == "mixed" else precision


def native_precision():
    """The inference precision OpenVINO picks by default here: bf16 with native bf16, else f32."""
    return "bf16" if bf16_support()[0] else "f32"


def compile_graph(graph, threads=None, precision=None):
    """`graph` (an ONNX / IR path or an ov.Model) compiled for the CPU at `precision` (f32, bf16; None:
    OpenVINO's default) with `threads` (None: all cores), for latency. Runtime options the model carries in
    its rt_info (weights.py's group size) apply."""
    import openvino as ov
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    model = core.read_model(str(graph)) if not isinstance(graph, ov.Model) else graph
    try:
        return core.compile_model(model, "CPU", config)
    except Exception as error:
        raise LSGExportError(f"OpenVINO cannot compile {graph if not isinstance(graph, ov.Model) else 'the graph'} "
                             f"({str(error).strip().splitlines()[0]})") from None


def describe(compiled, int8=False):
    """What OpenVINO compiled: version, inference precision, threads (int8: and the activations' group size)."""
    import openvino as ov
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # f32, bf16
    if precision == "f32" and any(op.get_rt_info()["runtimePrecision"].astype(str) == "bf16"
                                  for op in compiled.get_runtime_model().get_ordered_ops()):
        precision = "f32 with the graph's bf16 nodes in bf16 (mixed)"
    group = compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") if int8 else None
    return (f"OpenVINO {ov.get_version().split('-')[0]}, inference precision {precision}, "
            f"threads {compiled.get_property('INFERENCE_NUM_THREADS')}"
            + (f", int8 weights, activations quantized per group of {group}" if int8 else ""))


class Session:
    """A compiled model answering as the validation's ONNX Runtime session does (get_inputs, run)."""

    def __init__(self, compiled):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.names = [port.get_any_name() for port in compiled.inputs]

    def get_inputs(self):
        from types import SimpleNamespace
        return [SimpleNamespace(name=name) for name in self.names]

    def run(self, output_names, feeds):
        results = self.request.infer(feeds)
        by_name = {name: value for port, value in results.items() for name in port.get_names()}
        return [by_name[name].copy() for name in output_names]
