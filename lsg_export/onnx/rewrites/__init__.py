"""Graph rewrites applied to every exported graph, before it is saved: same results, faster in ONNX Runtime.

One rewrite per module, each an onnxscript pattern rule:
  gelu_order    x * (0.5 * (1 + erf(x / sqrt 2))) -> (x * (1 + erf(x / sqrt 2))) * 0.5, bit for bit the same,
                the order ONNX Runtime's GeluFusion recognises when it loads the graph (then BiasGelu);
  residual_sum  LayerNormalization(Add(Add(y, bias), residual)) -> LayerNormalization(Sum(y, bias, residual)),
                bit for bit the same; CPU only: it keeps ONNX Runtime from fusing SkipLayerNormalization,
                whose CPU kernel (float32, onnxruntime 1.31) is ~3x slower than Sum + LayerNormalization;
  row_tiles     the feed-forward block (MatMul, GELU, MatMul, residual Sum, LayerNormalization) on row tiles
                of ~1024 rows, bit for bit the same; CPU only: its intermediate then stays in cache at 16k
                tokens (needs the two rewrites above first).
"""
from . import gelu_order, residual_sum, row_tiles

# (rule, commute): commute also matches the other operand order of Add and Mul; not for row_tiles, whose
# variadic Sum onnxscript cannot swap (it matches the order the rules before it write)
RULES = {"cpu": ((gelu_order.RULE, True), (residual_sum.RULE, True), (row_tiles.RULE, False)),
         "cuda": ((gelu_order.RULE, True),)}


def apply_rewrites(model, device="cpu"):
    """Rewrite `model` (an onnx_ir Model) in place; returns {rewrite name: times applied}."""
    from onnxscript.rewriter import pattern
    counts = {}
    for rule, commute in RULES[device]:
        counts[rule.name] = pattern.RewriteRuleSet([rule], commute=commute).apply_to_model(model)
    return counts
