"""Graph optimisations after export: ONNX Runtime's transformer fusions, float16, int8 weights.

The levels are optimum's (optimum.onnxruntime.AutoOptimizationConfig):
  O1  ONNX Runtime's basic graph optimisations only (constant folding, redundant nodes);
  O2  extended optimisations + the transformer fusions of onnxruntime.transformers (model_type bert):
      LayerNormalization, SkipLayerNormalization, Gelu / BiasGelu, EmbedLayerNormalization where the
      pattern is there (LSG's global tokens put a Concat before the embeddings' LayerNorm, so it is not);
  O3  O2 + the tanh approximation of Gelu (FastGelu): faster, results change by ~1e-4..1e-3.
Attention fusion is off: LSG attention matches none of ONNX Runtime's attention kernels. The dense decoders
of the encoder-decoders are optimised with model_type bart instead (its attention fusion on; what it fuses
is in export.json, and the validation checks the result).

Temporary files are named after the graph (NAME.ort.onnx, NAME.fp32.onnx): a folder may hold several graphs.
"""
from collections import Counter

import onnx

from ..errors import LSGExportError

LEVELS = {
    "none": None,
    "O1": {"opt_level": 1, "fusions": False, "gelu_approximation": False},
    "O2": {"opt_level": 2, "fusions": True, "gelu_approximation": False},
    "O3": {"opt_level": 2, "fusions": True, "gelu_approximation": True},
}
QUANTIZE = ("int8",)


def check_options(level, fp16, quantize, device):
    if level not in LEVELS:
        raise LSGExportError(f"unknown --optimize level {level!r}; accepted: {', '.join(LEVELS)}")
    if quantize not in (None, *QUANTIZE):
        raise LSGExportError(f"unknown --quantize {quantize!r}; accepted: {', '.join(QUANTIZE)}")
    if device not in ("cpu", "cuda"):
        raise LSGExportError(f"unknown --device {device!r}; accepted: cpu, cuda")
    if fp16 and device != "cuda":
        raise LSGExportError("--fp16 is for CUDA: float16 kernels on CPU are slow or missing; pass --device cuda")
    if fp16 and quantize:
        raise LSGExportError("--fp16 and --quantize int8 exclude each other")
    if device == "cuda":
        import onnxruntime
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise LSGExportError("--device cuda needs onnxruntime-gpu with a CUDA GPU (CUDAExecutionProvider is not "
                                 f"available; providers: {', '.join(onnxruntime.get_available_providers())})")


def op_counts(model):
    return Counter(node.op_type for node in model.graph.node)


def heads_and_width(config):
    heads = config.get("num_attention_heads", config.get("n_heads"))
    width = config.get("hidden_size", config.get("dim"))
    return heads, width


# what onnxruntime.transformers.optimize_model disables in ONNX Runtime's pass when its own fusions follow
# (they would hide the patterns the fusions look for); ConstantSharing always
FUSION_UNFRIENDLY = ["MatMulScaleFusion", "MatMulAddFusion", "MatmulTransposeFusion", "GemmActivationFusion",
                     "BiasSoftmaxFusion"]


def onnxruntime_pass(path, opt_level, device, setup_session, fusions_follow, external_data):
    """ONNX Runtime's graph optimisations at `opt_level` (1 basic, 2 extended), written to a new file.

    The step optimize_model runs first, done here so that the session is set up as the attention
    kind needs (a graph with the custom op needs its library registered to load at all)."""
    import onnxruntime as ort
    out = path.with_name(path.stem + ".ort.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if opt_level == 1
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    options.optimized_model_filepath = str(out)
    if external_data:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         out.name + ".data")
    if setup_session is not None:
        setup_session(options)
    disabled = ["ConstantSharing"] + (FUSION_UNFRIENDLY if fusions_follow and opt_level > 1 else [])
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    ort.InferenceSession(str(path), options, providers=providers, disabled_optimizers=disabled)
    return out


def optimize_graph(path, level, config, device, external_data, setup_session=None, model_type="bert"):
    """Rewrite `path` in place with optimum's `level`; returns what changed.

    setup_session: the attention kind's session set-up (e.g. registering the custom-op library).
    model_type: onnxruntime.transformers' model type; "bart" (dense decoders) keeps its attention fusion."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from .export import quiet_exporter, save_model, set_ir_version

    spec = LEVELS[level]
    before = op_counts(onnx.load(str(path), load_external_data=False))
    options = FusionOptions(model_type)
    options.enable_attention = model_type != "bert"
    options.enable_gelu_approximation = spec["gelu_approximation"]
    heads, width = heads_and_width(config)
    optimized = None
    try:
        with quiet_exporter():
            optimized = onnxruntime_pass(path, spec["opt_level"], device, setup_session, spec["fusions"],
                                         external_data)
            if spec["fusions"]:  # onnxruntime.transformers' fusions on ONNX Runtime's output (opt_level 0: no 2nd pass)
                model = optimize_model(str(optimized), model_type, heads, width, optimization_options=options,
                                       opt_level=0, use_gpu=device == "cuda").model
            else:
                model = onnx.load(str(optimized))
    except LSGExportError:
        raise
    except Exception as error:
        raise LSGExportError(f"--optimize {level} failed ({error.__class__.__name__}: "
                             f"{str(error).splitlines()[0][:200] if str(error) else ''})") from None
    finally:
        if optimized is not None:
            optimized.unlink(missing_ok=True)
            optimized.with_name(optimized.name + ".data").unlink(missing_ok=True)
    set_ir_version(model)
    save_model(model, path, external_data)
    after = op_counts(model)
    return {"level": level, "model_type": model_type, "opt_level": spec["opt_level"],
            "transformer_fusions": spec["fusions"],
            "gelu_approximation": spec["gelu_approximation"], "nodes_before": sum(before.values()),
            "nodes_after": sum(after.values()),
            "fused": {op: n for op, n in sorted(after.items()) if n > before.get(op, 0) and op not in before}}


def to_float16(path, external_data):
    """Weights and compute in float16, inputs and outputs kept float32 (keep_io_types)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    from .export import quiet_exporter, save_model, set_ir_version
    model = OnnxModel(onnx.load(str(path)))
    try:
        with quiet_exporter():
            model.convert_float_to_float16(keep_io_types=True, use_symbolic_shape_infer=True)
    except Exception as error:
        raise LSGExportError(f"--fp16 conversion failed ({error.__class__.__name__}: {str(error)[:200]})") from None
    set_ir_version(model.model)
    save_model(model.model, path, external_data)
    return {"fp16": True, "keep_io_types": True}


def quantize_matmuls(source, target, external_data, per_channel=True, exclude=None, only=None):
    """ONNX Runtime's dynamic int8 quantisation of `source`'s MatMul weights, written to `target` (exclude /
    only: MatMul node names kept in float32 / the only ones quantized)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .export import quiet_exporter
    with quiet_exporter():
        # DefaultTensorType: onnx's shape inference gives no type past com.microsoft nodes (BiasGelu, ...)
        # and the row tiles' Slices; every activation of these float32 graphs is float32
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         per_channel=per_channel, use_external_data_format=external_data,
                         nodes_to_exclude=list(exclude or []), nodes_to_quantize=list(only or []),
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def quantize_int8(path, external_data, per_channel=True, keep_float=None):
    """Dynamic quantisation of the MatMul weights to int8 (QInt8), activations quantised at run time.

    per_channel: one scale per output column of each weight. One scale per tensor (False, the method until
    2026-12) lets each matrix's largest column set every column's step: on MiniLM-LSG at 4096 tokens (GPL-3)
    it gave a mean-pooled cosine of 0.948 to float32 where per-channel gives 0.996, at the same speed.
    Static QDQ quantisation calibrated on real text was slower (1.26 - 1.35x) and worse on the worst token
    (0.944), see docs/benchmarks.md.
    keep_float: int8_sensitivity.KeptFloat, the weights whose MatMuls stay float32 (--keep-float)."""
    source = path.with_name(path.stem + ".fp32.onnx")
    path.rename(source)
    data = path.with_name(path.name + ".data")
    try:
        quantize_matmuls(source, path, external_data, per_channel, exclude=keep_float.matmuls if keep_float else None)
    except Exception as error:
        raise LSGExportError(f"--quantize int8 failed ({error.__class__.__name__}: {str(error)[:200]})") from None
    finally:
        source.unlink(missing_ok=True)
        if not external_data:
            data.unlink(missing_ok=True)
    counts = op_counts(onnx.load(str(path), load_external_data=False))
    summary = {"quantize": "int8", "method": "dynamic", "per_channel": per_channel, "weight_type": "QInt8",
               "op_types": ["MatMul"],
               "quantized_matmuls": counts.get("MatMulInteger", 0) + counts.get("DynamicQuantizeMatMul", 0)}
    if keep_float:
        summary["kept_float"] = keep_float.record()
    return summary
