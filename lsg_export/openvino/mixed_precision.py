"""`lsg-export openvino --precision mixed`: bf16 where it is fast and harmless, float32 where LSG selects keys.

OpenVINO's bf16 inference precision runs nearly every node in bf16, the key norms and their TopK included
(2026.4 ignores the rt_info marks that should keep a node float32). Near-ties of the norms then pick other
sparse keys than float32 does, and a few tokens drift (ten of 16384 below a cosine of 0.99 on GPL-3). This
rewrite writes the precision into the graph instead: the weight MatMuls and the fused attentions take bf16
inputs (their values carried in bf16 through the reshapes, pads, gathers and concats that feed them), and
everything else is float32: the projections a selection (TopK) reads, the norms, TopK, layer norms, residual
sums and the global tokens' attention. Compiled at float32 inference precision, OpenVINO's CPU plugin runs the
bf16 nodes natively where the CPU has bf16 (AMX, AVX512-BF16) and the rest in float32.

Measured 2026-12-07 on a 2-core Intel Xeon with AMX, MiniLM-LSG at 16384 tokens (docs/benchmarks.md): tokens
below a cosine of 0.99 on three texts 10 / 1 / 3 with all bf16, 0 / 2 / 0 mixed; 1.10x the speed of OpenVINO's
bf16 on the gather graph, 0.77x that of the all-bf16 SDPA graph."""
import collections

F32, BF16 = "f32", "bf16"
PRODUCTS = {"MatMul", "ScaledDotProductAttention"}  # what runs in bf16 (MatMul: by a constant weight)
CARRIERS = {"Reshape", "Transpose", "Pad", "Gather", "Concat", "Slice", "StridedSlice", "Squeeze", "Unsqueeze",
            "Broadcast", "Split", "VariadicSplit", "Select", "ConvertLike"}  # move values, exact in any type
BIAS_OPS = {"Add", "Multiply", "Gelu"}  # bf16 when every float input is bf16 or a constant (a bias, a scale)
SELECTIONS = {"TopK"}
SELECTION_ROOTS = {"MVN", "Parameter", "Constant", "ShapeOf"}  # where the walk up from a selection stops


def selection_inputs(model):
    """The names of the nodes a selection (TopK) reads, up to the layer norm before it: kept float32."""
    kept, todo = set(), [op for op in model.get_ordered_ops() if op.get_type_name() in SELECTIONS]
    while todo:
        node = todo.pop()
        for index in range(node.get_input_size()):
            source = node.input_value(index).get_node()
            if source.get_type_name() not in SELECTION_ROOTS and source.get_friendly_name() not in kept:
                kept.add(source.get_friendly_name())
                todo.append(source)
    return kept


def explicit_bf16(model):
    """`model` (an ov.Model, float32) rewritten in place as the module docstring says; returns the count of
    rewritten nodes by (type, precision). Compile it with INFERENCE_PRECISION_HINT f32."""
    import openvino as ov
    from openvino import opset13 as ops
    kinds = {F32: ov.Type.f32, BF16: ov.Type.bf16}
    kept = selection_inputs(model)
    converted = {F32: {}, BF16: {}}  # one Convert per value and type

    def as_type(value, precision):
        key = (value.get_node().get_friendly_name(), value.get_index())
        if key not in converted[precision]:
            converted[precision][key] = ops.convert(value, kinds[precision]).output(0)
        return converted[precision][key]

    counts = collections.Counter()
    for op in list(model.get_ordered_ops()):
        kind = op.get_type_name()
        values = [op.input_value(index) for index in range(op.get_input_size())]
        floats = [index for index, value in enumerate(values) if value.get_element_type() in kinds.values()]
        bf16_in = [values[index].get_element_type() == kinds[BF16] for index in floats]
        if kind in PRODUCTS and op.get_friendly_name() not in kept and (
                kind != "MatMul" or values[1].get_node().get_type_name() == "Constant"):
            target = BF16
        elif any(bf16_in) and (kind in CARRIERS or kind in BIAS_OPS and all(
                is_bf16 or values[index].get_node().get_type_name() == "Constant"
                for index, is_bf16 in zip(floats, bf16_in))):
            target = BF16
        elif any(bf16_in):
            target = F32
        else:
            continue
        for index in floats:
            if values[index].get_element_type() != kinds[target]:
                op.input(index).replace_source_output(as_type(values[index], target))
        op.validate_and_infer_types()
        counts[(kind, target)] += 1
    for result in model.get_results():  # the outputs stay float32
        value = result.input_value(0)
        if value.get_element_type() == kinds[BF16]:
            result.input(0).replace_source_output(as_type(value, F32))
            result.validate_and_infer_types()
    model.validate_nodes_and_infer_types()
    return counts
