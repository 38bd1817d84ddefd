"""LayerNormalization(Add(Add(y, bias), residual)) -> LayerNormalization(Sum(y, bias, residual)).

Sum adds its inputs in order, so the result is the same bits. The point is what ONNX Runtime does with
the Add form when it loads the graph: it fuses SkipLayerNormalization, whose float32 CPU kernel
(onnxruntime 1.31) took 8.5 ms on a (1, 4096, 384) input where Sum + LayerNormalization take 3.3 ms
(and 34 vs 10 ms at 16384 rows: it also scales worse)."""
from onnxscript.rewriter import pattern


def target(op, y, bias, residual, scale, shift):
    return op.LayerNormalization(op.Add(op.Add(y, bias), residual), scale, shift, _allow_other_attributes=True,
                                 _outputs=["normed"])


def replacement(op, y, bias, residual, scale, shift, normed):
    node = normed.producer()
    return op.LayerNormalization(op.Sum(y, bias, residual), scale, shift, **{
        name: attr.value for name, attr in node.attributes.items()})


def condition(context, bias, normed, **_):
    # the bias a 1-D weight, the normalised output the node's only one (no mean / inv std-dev outputs used)
    node = normed.producer()
    return bias.const_value is not None and len(bias.shape or ()) == 1 and len(node.outputs) == 1


RULE = pattern.RewriteRule(target, replacement, condition, name="residual_sum")
