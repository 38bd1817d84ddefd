"""Exact GELU as torch.export spells it, x * (0.5 * (1 + erf(x / sqrt 2))), reordered to
(x * (1 + erf(x / sqrt 2))) * 0.5: the form ONNX Runtime's GeluFusion matches when a session loads the
graph (then BiasGeluFusion folds the preceding bias Add in). Multiplying by 0.5 is exact, so both orders
give the same bits."""
import math

from onnxscript.rewriter import pattern

from ._constants import is_scalar


def target(op, x, half, one, root2):
    return op.Mul(x, op.Mul(half, op.Add(op.Erf(op.Div(x, root2)), one)))


def fusable_gelu(op, x, half, one, root2):
    """(x * (1 + erf(x / sqrt 2))) * 0.5: the spelling GeluFusion matches (row_tiles writes it too)."""
    return op.Mul(op.Mul(x, op.Add(op.Erf(op.Div(x, root2)), one)), half)


def replacement(op, x, half, one, root2):
    return fusable_gelu(op, x, half, one, root2)


def condition(context, x, half, one, root2, **_):
    return is_scalar(half, 0.5) and is_scalar(one, 1.0) and is_scalar(root2, math.sqrt(2.0), rel=1e-6)


RULE = pattern.RewriteRule(target, replacement, condition, name="gelu_order")
