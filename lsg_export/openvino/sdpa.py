"""The graph `lsg-export openvino` converts by default: the gather export's model with its block attention
spelled as ONNX `Attention` (opset 23, torch's scaled_dot_product_attention), which OpenVINO's CPU plugin runs
as one fused attention node (scores, softmax and the value product per tile, on AMX where the CPU has it)
where the gather graph runs a MatMul, a Softmax over (blocks, bs, keys) scores held in memory, and a MatMul.

The keys, values and masks of every block are those of lsg_attention.block_attention (the source of truth):
only its `product` is swapped, with the blocks folded into the heads axis. Measured 2026-12-06 on a 2-core
Intel Xeon with AMX, MiniLM-LSG, bf16: 529 against 766 ms at 4096 tokens, 2071 against 2821 ms at 16384, at
the gather graph's cosines (docs/benchmarks.md).

The graph is OpenVINO's only: ONNX Runtime 1.32's Attention refuses a mask broadcast over the queries (and
the mask expanded over them was slower in both runtimes), so it is made for the conversion and not kept as
an ONNX export (no `lsg-export onnx --attention sdpa`)."""
import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from ..modeling.lsg_attention import block_attention
from ..onnx.attention_kinds import AttentionKind

OPSET = 23  # the first with ONNX Attention, what torch.onnx writes scaled_dot_product_attention as
ATTENTIONS = ("sdpa", "gather")  # lsg-export openvino --attention


def sdpa_product(q, k, v, mask, dropout=None):
    """lsg_attention.attend of block_attention's windows through scaled_dot_product_attention: q (n, h, blocks,
    bs, d), k and v (n, h, blocks, keys, d), mask (n, h, blocks, 1, keys) -> (n, h, blocks, bs, d)."""
    n, h, blocks, bs, d = q.shape
    keys = k.shape[3]
    out = F.scaled_dot_product_attention(
        q.reshape(n, -1, bs, d), k.reshape(n, -1, keys, d), v.reshape(n, -1, keys, d),
        attn_mask=mask.reshape(n, -1, 1, keys), dropout_p=0.0 if dropout is None else dropout.p)
    return out.reshape(n, h, blocks, bs, d)


SDPA_KIND = AttentionKind(
    "sdpa", "LSG block attention as ONNX Attention (scaled_dot_product_attention), for OpenVINO only",
    block_attention=functools.partial(block_attention, product=sdpa_product), min_opset=OPSET, providers=())


@torch.no_grad()
def export_sdpa_graph(module, layout, seq, target, status):
    """The SDPA graph of the layout's single part (module: its PyTorch model at `seq` positions) written to
    `target` (a file: model.onnx), through the exporter every ONNX export uses."""
    from ..onnx.export import export_graph, finish_graph
    part = layout.parts(module, seq)[0]
    status(f"exporting the SDPA graph (opset {OPSET})")
    export_graph(part.module, part.example, target, output_names=part.outputs, kind=SDPA_KIND, opset=OPSET,
                 external_data=False, dynamic_dims=part.dynamic_dims)
    finish_graph(target, input_axes=part.input_axes, output_axes=part.output_axes, external_data=False,
                 input_names=part.input_names, check=False)  # ONNX Runtime's shape inference has no Attention
    return Path(target)

