"""The `custom-op` attention kind: LSG attention as one ai.lsg.LSGAttention node per layer.

The node reads the query, key and value projections as they come out of their MatMuls, (n, G + T,
h * d), and gives the attention output in that layout: no per-head transposes, slices of the globals
or concatenation of the global rows are left in the graph. Only the compression stays outside (for
the norm compression, a Gather of whole rows from the same (n, G + T, h * d) tensors).

torch side: torch.library custom ops whose eager implementations are lsg_attention's own functions
(eager results do not change) and whose fake implementations give torch.export the output shape, so
each op stays one node through tracing. ONNX side: translations of those ops into ai.lsg nodes
(torch.onnx's custom_translation_table) and ONNX schemas for them, registered in this process so that
onnxscript, onnx's shape inference and ONNX Runtime's symbolic shape inference (which the transformer
optimizer and the float16 converter run) know their inputs and output types.

ai.lsg.BlockSparseAttention (the block part alone, operands (n, h, rows, d); what this kind
exported before LSGAttention) stays here for benchmarks/bench_custom_op.py and for the graphs that use
it. The nodes' contracts are custom_ops/README.md; the kernels are the custom-op library (lsg_export.ops).
"""
import functools
from typing import Optional

import onnx
import torch
from onnxscript.values import Opset

from ..modeling.lsg_attention import LSGAttention, block_attention, lsg_attend, merge_heads, split_heads
from ..ops.build import BUILD_HINT
from ..ops.session import DOMAIN, LSG_OP_TYPE, OP_TYPE, OP_VERSION

INPUTS = ("q", "k", "v", "key_mask", "global_k", "global_v", "sparse_k", "sparse_v", "sparse_mask")
LSG_INPUTS = ("q", "k", "v", "key_mask", "sparse_k", "sparse_v", "sparse_mask")
SPARSE_INPUTS = 3  # the compressed keys, values and mask, last, may be left out (sparse_block_size 0, sparsity none)
LIBRARY_RECORD = {"domain": DOMAIN, "op": OP_TYPE, "version": OP_VERSION, "build": BUILD_HINT.removeprefix("run "),
                  "python": "lsg_export.ops.session_options_with_ops()"}


@torch.library.custom_op("lsg_export::block_sparse_attention", mutates_args=())
def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
                           global_k: torch.Tensor, global_v: torch.Tensor, sparse_k: Optional[torch.Tensor],
                           sparse_v: Optional[torch.Tensor], sparse_mask: Optional[torch.Tensor], block_size: int,
                           sparse_block_size: int, sparsity_factor: int) -> torch.Tensor:
    return block_attention(q, k, v, key_mask, global_k, global_v, sparse_k, sparse_v, sparse_mask, block_size,
                           sparse_block_size, sparsity_factor)


@block_sparse_attention.register_fake
def _(q, k, v, key_mask, global_k, global_v, sparse_k, sparse_v, sparse_mask, block_size, sparse_block_size,
      sparsity_factor):
    return q.new_empty(q.shape)


TORCH_OP = torch.ops.lsg_export.block_sparse_attention.default


@torch.library.custom_op("lsg_export::lsg_attention", mutates_args=())
def lsg_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
                  sparse_k: Optional[torch.Tensor], sparse_v: Optional[torch.Tensor],
                  sparse_mask: Optional[torch.Tensor], num_heads: int, num_global: int, block_size: int,
                  sparse_block_size: int, sparsity_factor: int) -> torch.Tensor:
    split = functools.partial(split_heads, heads=num_heads)
    return merge_heads(lsg_attend(split(q), split(k), split(v), key_mask, sparse_k, sparse_v, sparse_mask, num_global,
                                  block_size, sparse_block_size, sparsity_factor))


@lsg_attention.register_fake
def _(q, k, v, key_mask, sparse_k, sparse_v, sparse_mask, num_heads, num_global, block_size, sparse_block_size,
      sparsity_factor):
    return q.new_empty(q.shape)


LSG_TORCH_OP = torch.ops.lsg_export.lsg_attention.default


def custom_op_forward_tokens(module, q, k, v, key_mask, heads):
    """LSGAttention.forward_tokens of `module` through the LSGAttention op (training: the module's own)."""
    if module.training:
        return LSGAttention.forward_tokens(module, q, k, v, key_mask, heads)
    sparse = module.compress_tokens(q, k, v, key_mask, heads) if module.uses_sparse else (None, None, None)
    return lsg_attention(q, k, v, key_mask, *sparse, heads, module.num_global_tokens, module.block_size,
                         module.sparse_block_size, module.sparsity_factor)


def custom_op_block_attention(q, k, v, key_mask, global_k, global_v, sparse_k, sparse_v, sparse_mask,
                              block_size, sparse_block_size, sparsity_factor, dropout=None):
    """lsg_attention.block_attention's signature, through the custom op (dropout: training only, no op)."""
    if dropout is not None:
        return block_attention(q, k, v, key_mask, global_k, global_v, sparse_k, sparse_v, sparse_mask, block_size,
                               sparse_block_size, sparsity_factor, dropout)
    return block_sparse_attention(q, k, v, key_mask, global_k, global_v, sparse_k, sparse_v, sparse_mask,
                                  block_size, sparse_block_size, sparsity_factor)


def onnx_schema(op_type=OP_TYPE):
    """ai.lsg.BlockSparseAttention-1 or ai.lsg.LSGAttention-1 as an ONNX OpSchema; the output has the
    type and shape of q."""
    schema = onnx.defs.OpSchema
    parameter = schema.FormalParameter
    names = LSG_INPUTS if op_type == LSG_OP_TYPE else INPUTS
    inputs = [parameter(name, "T", param_option=schema.FormalParameterOption.Optional
                        if i >= len(names) - SPARSE_INPUTS else schema.FormalParameterOption.Single)
              for i, name in enumerate(names)]
    attribute = lambda name, value, doc: schema.Attribute(name, onnx.helper.make_attribute(name, value), doc)  # noqa: E731
    required = lambda name, doc: schema.Attribute(name, schema.AttrType.INT, doc, required=True)  # noqa: E731
    heads = [required("num_heads", "h: q, k, v are (n, G + T, h * d)"),
             required("num_global", "G: the first G rows are the globals")] if op_type == LSG_OP_TYPE else []
    op = schema(op_type, DOMAIN, OP_VERSION, "LSG attention (custom_ops/README.md)", inputs=inputs,
                outputs=[parameter("out", "T")],
                type_constraints=[("T", ["tensor(float)", "tensor(float16)"],
                                   "float32, or float16 computed in float32")],
                attributes=[*heads, required("block_size", "queries per block"),
                            attribute("sparse_block_size", 0, "compressed keys on each side; 0: none"),
                            attribute("sparsity_factor", 1, "compression factor"),
                            attribute("scale", 0.0, "multiplies q; 0: 1/sqrt(head dim)")])
    op.set_type_and_shape_inference_function(lambda ctx: ctx.set_output_type(0, ctx.get_input_type(0)))
    return op


def register_onnx_schemas():
    for op_type in (OP_TYPE, LSG_OP_TYPE):
        if not onnx.defs.has(op_type, DOMAIN):
            onnx.defs.register_schema(onnx_schema(op_type))


register_onnx_schemas()
_LSG = Opset(DOMAIN, OP_VERSION)


def translate_block_sparse_attention(q, k, v, key_mask, global_k, global_v, sparse_k=None, sparse_v=None,
                                     sparse_mask=None, block_size=1, sparse_block_size=0, sparsity_factor=1):
    """torch.onnx translation of the torch op: one ai.lsg node (scale left at 0, i.e. 1/sqrt(d), as the model)."""
    sparse = (sparse_k, sparse_v, sparse_mask) if sparse_k is not None and sparse_block_size else ()
    return _LSG.BlockSparseAttention(q, k, v, key_mask, global_k, global_v, *sparse, block_size=block_size,
                                     sparse_block_size=sparse_block_size if sparse else 0,
                                     sparsity_factor=sparsity_factor)


def translate_lsg_attention(q, k, v, key_mask, sparse_k=None, sparse_v=None, sparse_mask=None, num_heads=1,
                            num_global=0, block_size=1, sparse_block_size=0, sparsity_factor=1):
    """torch.onnx translation of the LSGAttention torch op: one ai.lsg node (scale 0, i.e. 1/sqrt(d))."""
    sparse = (sparse_k, sparse_v, sparse_mask) if sparse_k is not None and sparse_block_size else ()
    return _LSG.LSGAttention(q, k, v, key_mask, *sparse, num_heads=num_heads, num_global=num_global,
                             block_size=block_size, sparse_block_size=sparse_block_size if sparse else 0,
                             sparsity_factor=sparsity_factor)


def register_library(options):
    """Session set-up of a graph holding the op: the custom-op library registered (built if missing)."""
    from ..ops.session import session_options_with_ops
    session_options_with_ops(options)
