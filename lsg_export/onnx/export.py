"""torch -> ONNX: the attention kinds and the export of one graph valid at every length.

The graph comes from torch.export (non-strict) with fully dynamic batch and sequence dims, then
torch.onnx's dynamo exporter. The TorchScript exporter is not used: it records shapes as constants
of the traced length (the LSG padding, the block count, the position slice), giving a graph that is
only right at that length. Here the example length is only an example: the padding
ceil(t / block) * block - t, the number of blocks and the position slice stay symbolic.
"""
import contextlib
import logging
import time
import warnings

import torch

from ..errors import LSGExportError
from ..modeling.lsg_attention import block_attention
from .attention_kinds import (ATTENTION_KINDS, MIN_OPSET, AttentionKind, get_attention_kind,  # noqa: F401
                              register_attention_kind)
from .rewrites import apply_rewrites

MAX_OPSET = 25  # opset 25 needs IR 13, the highest onnxruntime 1.31 loads (18..25 checked)
DEFAULT_OPSET = 18
MAX_IR_VERSION = 13  # onnxruntime 1.31 loads IR <= 13 (onnx 1.23 writes 14 by default); the exporter writes 10
EXTERNAL_DATA_BYTES = 1_800_000_000  # above, weights go to model.onnx.data (protobuf's limit is 2 GB)
EXTERNAL_DATA_NAME = "model.onnx.data"


# --- export ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def quiet_exporter():
    """No log lines or warnings from torch.export, torch.onnx (a line per missing optional package),
    onnxscript and ONNX Runtime's tools (whose loggers are top-level modules) while a step runs."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def check_opset(opset, kind):
    import onnx
    highest = min(onnx.defs.onnx_opset_version(), MAX_OPSET)
    if not isinstance(opset, int) or opset < kind.min_opset:
        raise LSGExportError(f"--opset {opset} is below {kind.min_opset}, the lowest this graph can use "
                             f"(torch's ONNX exporter, LayerNormalization with the {kind.name} attention)")
    if opset > highest:
        raise LSGExportError(f"--opset {opset} is above {highest}, the highest whose IR version (13) "
                             f"ONNX Runtime loads")


def export_graph(module, inputs, path, *, output_names, kind, opset, external_data, dynamic_dims=None,
                 device="cpu"):
    """module(**inputs) -> path (ONNX), every input dim symbolic but where `dynamic_dims` ({input name:
    its symbolic dims}) says otherwise; the graph rewritten for ONNX Runtime on `device` (rewrites/).
    Returns the seconds spent."""
    start = time.perf_counter()
    names = list(inputs)
    args = tuple(inputs[n] for n in names)
    dynamic_dims = dynamic_dims or {}
    dynamic_shapes = {name: {i: torch.export.Dim.DYNAMIC for i in dynamic_dims.get(name, range(inputs[name].dim()))}
                      for name in names}
    try:
        with quiet_exporter(), torch.no_grad(), kind.installed(module):
            module(*args)  # one eager forward: lsh creates its projections lazily
            # backed_size_oblivious: no specialisation of a dim to 1 (batch 1, one block), as torch.onnx does
            with torch.fx.experimental._config.patch(backed_size_oblivious=True):
                program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False,
                                              prefer_deferred_runtime_asserts_over_guards=True)
            onnx_program = torch.onnx.export(program, opset_version=opset, dynamo=True, optimize=False,
                                             verbose=False, report=False,
                                             custom_translation_table=dict(kind.translations) or None)
            tidy(onnx_program.model)
            apply_rewrites(onnx_program.model, device)
    except LSGExportError:
        raise
    except Exception as error:  # torch.export / the exporter: one line, the first of the message
        first = (str(error).strip().splitlines() or [""])[0][:300]
        raise LSGExportError(f"the ONNX export failed ({error.__class__.__name__}: {first})") from None
    for value, name in zip(onnx_program.model.graph.outputs, output_names):
        value.name = name
    onnx_program.save(str(path), external_data=external_data)
    return time.perf_counter() - start


def tidy(model):
    """onnxscript's optimiser without its pattern rewrites: constant folding, unused and duplicate
    nodes and initializers out, constants lifted to initializers.

    The rewrite rules (no-op and slice collapsing, ...) cost a second per tiny export and gain nothing
    measurable: ONNX Runtime applies the same eliminations when it loads the graph, and --optimize
    writes them into the file."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript.optimizer import _constant_folding as folding
    ir.passes.Sequential(
        common.InlinePass(),
        ir.passes.PassManager([folding.FoldConstantsPass(shape_inference=True,
                                                         input_size_limit=folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                                                         output_size_limit=folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT),
                               common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(),
                               common.RemoveUnusedOpsetsPass()], steps=2, early_stop=True),
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)


def finish_graph(path, *, input_axes, output_axes, external_data, doc="", input_names=None, check=True):
    """Name the inputs and the symbolic dims as optimum does, cap the IR version, check the graph (with
    ONNX Runtime's symbolic shape inference: check=False for a graph made for another runtime); returns
    the proto.

    input_axes: the dim names of every input, or {input name: its dim names (None: keep the exporter's)};
    input_names: {torch argument name: ONNX input name} where they differ."""
    import onnx
    model = onnx.load(str(path))
    input_names = input_names or {}
    for value in model.graph.input:
        value.name = input_names.get(value.name, value.name)
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in input_names:
                node.input[k] = input_names[name]
    renames = {}  # each input's own symbols (torch names them apart) -> optimum's axis names
    for value in model.graph.input:
        axes = input_axes.get(value.name, ()) if isinstance(input_axes, dict) else input_axes
        for dim, axis in zip(value.type.tensor_type.shape.dim, axes):
            if dim.dim_param and axis:
                renames[dim.dim_param] = axis
    for value in list(model.graph.input) + list(model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]
    for value, axes in zip(model.graph.output, output_axes):
        for dim, axis in zip(value.type.tensor_type.shape.dim, axes):
            if axis is not None:
                dim.dim_param = axis  # also replaces the exporter's expressions (e.g. a Min) of the length
    # value_info of the weights repeats their shape, and goes stale when a tool rewrites a weight in
    # place (ONNX Runtime's quantizer transposes Gemm weights into MatMul ones): drop it
    weights = {init.name for init in model.graph.initializer}
    kept = [v for v in model.graph.value_info if v.name not in weights]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    # the exporter's per-node metadata (stack traces with local paths, fx names, scopes) is most of
    # the file of a small model: not kept
    for item in [*model.graph.node, *model.graph.input, *model.graph.output, *model.graph.value_info,
                 *model.graph.initializer]:
        del item.metadata_props[:]
    spell_reduce_l2(model)
    set_ir_version(model)
    model.doc_string = doc
    save_model(model, path, external_data)
    if check:
        check_graph(path, None if external_data else model)  # > 2 GB: checked from the file, weights not loaded
    return model


def spell_reduce_l2(model):
    """ReduceL2(x, axes) -> Sqrt(ReduceSum(x * x, axes)), the same computation.

    From opset 18 the axes of ReduceL2 are an input, which ONNX Runtime's symbolic shape inference
    (and so its transformer optimizer) cannot follow; it handles ReduceSum. Used by the norm sparsity."""
    import onnx
    nodes = []
    for node in model.graph.node:
        if node.op_type != "ReduceL2" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            nodes.append(node)
            continue
        x, out = node.input[0], node.output[0]
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        nodes += [onnx.helper.make_node("Mul", [x, x], [out + "_square"], name=node.name + "_square"),
                  onnx.helper.make_node("ReduceSum", [out + "_square", node.input[1]], [out + "_sum"],
                                        name=node.name + "_sum", **attributes),
                  onnx.helper.make_node("Sqrt", [out + "_sum"], [out], name=node.name + "_sqrt")]
    if len(nodes) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(nodes)


def set_ir_version(model):
    """The lowest IR version the graph's opsets allow, never above what ONNX Runtime loads."""
    import onnx
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = min(max(needed, min(model.ir_version, 10)), MAX_IR_VERSION)


def save_model(model, path, external_data):
    import onnx
    data = path.with_name(EXTERNAL_DATA_NAME)
    if data.exists():
        data.unlink()
    onnx.save_model(model, str(path), save_as_external_data=external_data, all_tensors_to_one_file=True,
                    location=EXTERNAL_DATA_NAME, size_threshold=1024)


def check_graph(path, model=None, symbolic=True):
    """onnx.checker and ONNX Runtime's symbolic shape inference must accept the graph."""
    import onnx
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as error:
        raise LSGExportError(f"the exported graph fails onnx.checker: {str(error).splitlines()[0][:300]}") from None
    if symbolic:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
        model = model if model is not None else onnx.load(str(path), load_external_data=False)
        try:
            with quiet_exporter():
                inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        except Exception as error:
            raise LSGExportError(f"ONNX Runtime's symbolic shape inference fails on the graph "
                                 f"({error.__class__.__name__}: {str(error)[:200]})") from None
        if inferred is None:
            raise LSGExportError("ONNX Runtime's symbolic shape inference could not complete on the graph")


def graph_domains(model):
    """The op domains of a graph's nodes ('' is the standard one)."""
    return sorted({node.domain or "" for node in model.graph.node})


def final_graph(path):
    """What the written model.onnx holds after every step; its IR version brought within ONNX Runtime's."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    before = model.ir_version
    set_ir_version(model)
    if model.ir_version != before:  # e.g. a tool that rebuilt the model with onnx's newest IR
        onnx.save_model(model, str(path))  # external data references, if any, are kept as they are
    return {"nodes": len(model.graph.node), "domains": graph_domains(model), "ir_version": model.ir_version,
            "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import}}


# --- the block attention alone (tests and benchmarks of the attention kinds) ----------------------

BLOCK_ATTENTION_INPUTS = ("q", "k", "v", "key_mask", "global_k", "global_v", "sparse_k", "sparse_v", "sparse_mask")


class BlockAttention(torch.nn.Module):
    """One LSGAttention's block attention as a module: what each attention kind puts in the graph."""

    def __init__(self, block_size, sparse_block_size, sparsity_factor):
        super().__init__()
        self.geometry = (block_size, sparse_block_size, sparsity_factor)
        self.block_attention = block_attention

    def forward(self, q, k, v, key_mask, global_k, global_v, sparse_k=None, sparse_v=None, sparse_mask=None):
        return self.block_attention(q, k, v, key_mask, global_k, global_v, sparse_k, sparse_v, sparse_mask,
                                    *self.geometry)


def export_block_attention(kind, inputs, path, block_size, sparse_block_size, sparsity_factor,
                           opset=DEFAULT_OPSET):
    """The `kind`'s block attention alone -> path (ONNX), valid for every batch, head count and length.

    inputs: q, k, v, key_mask, global_k, global_v [, sparse_k, sparse_v, sparse_mask] (tensors);
    the graph's inputs carry those names, its output is `out`."""
    module = BlockAttention(block_size, sparse_block_size, sparsity_factor)
    if kind.block_attention is not None:
        module.block_attention = kind.block_attention
    named = dict(zip(BLOCK_ATTENTION_INPUTS, inputs))
    # batch, heads and lengths symbolic; the head dim is the example's (the scale 1/sqrt(d) is a constant),
    # and key_mask's head and last dims are 1 (sparse_mask has 1 head or one per head)
    dims = {name: (0, 2) if name == "key_mask" else (0, 1, 2) for name in named}
    export_graph(module, named, path, output_names=["out"], kind=kind, opset=opset, external_data=False,
                 dynamic_dims=dims)
    return path
