"""Helpers of the rewrite conditions."""
import math


def is_scalar(value, expected, rel=0.0):
    """`value` is a constant holding one number equal to `expected` (within `rel`)."""
    const = value.const_value
    if const is None:
        return False
    array = const.numpy()
    return array.size == 1 and math.isclose(float(array.reshape(-1)[0]), expected, rel_tol=rel, abs_tol=0.0)
