"""The `custom-op` attention backend: LSG block attention as one ai.lsg.BlockSparseAttention node.

torch side: a torch.library custom op whose eager implementation is lsg_attention.block_attention
itself (eager results do not change) and whose fake implementation gives torch.export the output
shape, so the op stays one node through tracing. ONNX side: a translation of that op into the ai.lsg
node (torch.onnx's custom_translation_table) and an ONNX schema for it, registered in this process
so that onnxscript, onnx's shape inference and ONNX Runtime's symbolic shape inference (which the
transformer optimizer and the float16 converter run) know its inputs and output type.

The node's contract is custom_ops/README.md; the kernels are the custom-op library (lsg_export.ops).
"""
from typing import Optional

import onnx
import torch
from onnxscript.values import Opset

from ..modeling.lsg_attention import block_attention
from ..ops import BUILD_HINT, DOMAIN, OP_TYPE, OP_VERSION

INPUTS = ("q", "k", "v", "key_mask", "global_k", "global_v", "sparse_k", "sparse_v", "sparse_mask")
OPTIONAL_FROM = 6  # the compressed keys, values and mask may be left out (sparse_block_size 0, sparsity none)
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


def custom_op_block_attention(q, k, v, key_mask, global_k, global_v, sparse_k, sparse_v, sparse_mask,
                              block_size, sparse_block_size, sparsity_factor, dropout=None):
    """lsg_attention.block_attention's signature, through the custom op (dropout: training only, no op)."""
    if dropout is not None:
        return block_attention(q, k, v, key_mask, global_k, global_v, sparse_k, sparse_v, sparse_mask, block_size,
                               sparse_block_size, sparsity_factor, dropout)
    return block_sparse_attention(q, k, v, key_mask, global_k, global_v, sparse_k, sparse_v, sparse_mask,
                                  block_size, sparse_block_size, sparsity_factor)


def onnx_schema():
    """ai.lsg.BlockSparseAttention-1 as an ONNX OpSchema; its output has the type and shape of q."""
    schema = onnx.defs.OpSchema
    parameter = schema.FormalParameter
    inputs = [parameter(name, "T", param_option=schema.FormalParameterOption.Optional if i >= OPTIONAL_FROM
                        else schema.FormalParameterOption.Single) for i, name in enumerate(INPUTS)]
    attribute = lambda name, value, doc: schema.Attribute(name, onnx.helper.make_attribute(name, value), doc)  # noqa: E731
    op = schema(OP_TYPE, DOMAIN, OP_VERSION, "LSG block attention (custom_ops/README.md)", inputs=inputs,
                outputs=[parameter("out", "T")],
                type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float32, or float16 computed in float32")],
                attributes=[schema.Attribute("block_size", schema.AttrType.INT, "queries per block", required=True),
                            attribute("sparse_block_size", 0, "compressed keys on each side; 0: none"),
                            attribute("sparsity_factor", 1, "compression factor"),
                            attribute("scale", 0.0, "multiplies q; 0: 1/sqrt(head dim)")])
    op.set_type_and_shape_inference_function(lambda ctx: ctx.set_output_type(0, ctx.get_input_type(0)))
    return op


def register_onnx_schema():
    if not onnx.defs.has(OP_TYPE, DOMAIN):
        onnx.defs.register_schema(onnx_schema())


register_onnx_schema()
_LSG = Opset(DOMAIN, OP_VERSION)


def translate_block_sparse_attention(q, k, v, key_mask, global_k, global_v, sparse_k=None, sparse_v=None,
                                     sparse_mask=None, block_size=1, sparse_block_size=0, sparsity_factor=1):
    """torch.onnx translation of the torch op: one ai.lsg node (scale left at 0, i.e. 1/sqrt(d), as the model)."""
    sparse = (sparse_k, sparse_v, sparse_mask) if sparse_k is not None and sparse_block_size else ()
    return _LSG.BlockSparseAttention(q, k, v, key_mask, global_k, global_v, *sparse, block_size=block_size,
                                     sparse_block_size=sparse_block_size if sparse else 0,
                                     sparsity_factor=sparsity_factor)


def register_library(options):
    """Session set-up of a graph holding the op: the custom-op library registered (built if missing)."""
    from ..ops import session_options_with_ops
    session_options_with_ops(options)
