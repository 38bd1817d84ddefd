"""int8 weights for OpenVINO: NNCF's weight compression (int8, one scale and zero point per output channel)
of every MatMul and embedding table, with OpenVINO's dynamic quantization of the MatMuls' activations at run
time (each token's GROUP_SIZE consecutive input channels share a step), so that the products run in int8
(VNNI, AMX-int8) and the rest at the CPU's inference precision.

Why not ONNX Runtime's dynamic int8: it quantizes each activation with one step for all the tokens of a
document, which costs the tokens of small range most (lowest per-token cosine 0.95 on MiniLM-LSG at 4096
tokens of GPL-3). Per token and group the step follows each token: 0.99929 / 0.99169 (mean-pooled / lowest
token) at 1.20x bf16's speed, 2026-12-06, 2-core AMD EPYC with AVX512-BF16 and VNNI, docs/benchmarks.md.
Groups of 32 / 64 were slower and no closer; 384 (one group per token) faster and below 0.99 on the worst
token; symmetric weights (int8-sym) lost more of the pooled cosine (0.99905)."""
import contextlib
import io
import logging

from ..errors import LSGExportError

GROUP_SIZE = 128
MODES = {"int8": "INT8_ASYM", "int8-sym": "INT8_SYM"}  # --weights -> nncf.CompressWeightsMode
RUNTIME_OPTION = ["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"]  # rt_info key compile_model applies


def compress_int8(model, mode="int8", group_size=GROUP_SIZE, keep_float=(), embeddings=True):
    """`model` (an ov.Model) with int8 weights (MODES[mode]) and the activations' group size in its rt_info, so
    that every compile_model of it, ours or a user's, quantizes them at run time. keep_float: MatMul names left
    in float; embeddings: the embedding tables (Gather) in int8 too. Returns (model, the number of weights
    compressed)."""
    import nncf
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    ignored = nncf.IgnoredScope(names=list(keep_float), types=[] if embeddings else ["Gather"], validate=False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # NNCF's table of bit widths and its progress bar
            compressed = nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, MODES[mode]),
                                               ignored_scope=ignored)
    finally:
        logger.setLevel(level)
    compressed.set_rt_info(str(group_size), RUNTIME_OPTION)
    return compressed, int8_weight_count(compressed)


def int8_weight_count(model):
    """The number of int8 / uint8 weight matrices in `model` (not their (rows, 1) zero points)."""
    return sum(op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() in ("i8", "u8")
               and len(op.get_output_shape(0)) == 2 and min(op.get_output_shape(0)) > 1
               for op in model.get_ordered_ops())


def group_size_of(model):
    """The activations' group size `model` carries (None: none)."""
    return int(model.get_rt_info(RUNTIME_OPTION).astype(str)) if model.has_rt_info(RUNTIME_OPTION) else None


def matmuls_by_weight(model):
    """{weight constant: [names of the MatMuls that multiply by it]} of `model` (an ov.Model), in graph order:
    the feed-forward's row tiles share their weight, as in the ONNX graph (onnx/int8_sensitivity.py)."""
    groups = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        source = op.input_value(1).get_node()
        while source.get_type_name() in ("Convert", "Reshape", "Transpose") and source.get_input_size():
            source = source.input_value(0).get_node()
        if source.get_type_name() == "Constant":
            groups.setdefault(source.get_friendly_name(), []).append(op.get_friendly_name())
    return groups


def check_keep_float_count(count, groups):
    """--keep-float `count` against a graph's MatMul weights (matmuls_by_weight's `groups`)."""
    if count > len(groups):
        raise LSGExportError(f"--keep-float {count}: the graph has {len(groups)} MatMul weights")


def choose_kept_float(graph, count, feeds, output, mode="int8", group_size=GROUP_SIZE, precision=None, status=None):
    """The `count` MatMul weights of the graph at `graph` whose int8 alone costs most on `feeds`, as the model
    will run: the rest of the graph at `precision` (None: OpenVINO's default here), compared with the float32
    run. Ranked at f32 instead (int8's own error, no bf16 beside it) the two worst weights of MiniLM-LSG were
    others, and keeping them did not lift the worst token (docs/benchmarks.md). An int8_sensitivity.KeptFloat."""
    import numpy as np
    import openvino as ov

    from ..onnx.int8_sensitivity import kept_float, rank_weights
    from .runtime import compile_graph
    core = ov.Core()
    run = lambda model, at=precision: compile_graph(model, None, at)(feeds)[output]  # noqa: E731
    groups = matmuls_by_weight(core.read_model(str(graph)))
    check_keep_float_count(count, groups)
    everything = [name for names in groups.values() for name in names]

    def int8_alone(names):
        alone = set(names)
        model, _ = compress_int8(core.read_model(str(graph)), mode, group_size,
                                 keep_float=[n for n in everything if n not in alone], embeddings=False)
        return run(model)

    ranking = rank_weights(groups, run(core.read_model(str(graph)), "f32"), int8_alone,
                           np.asarray(feeds["attention_mask"]).astype(bool), status)
    return kept_float(groups, ranking, count, int(feeds["input_ids"].shape[1]))
