"""model_short.onnx: an encoder export's model for inputs of at most two LSG blocks, beside model.onnx.

Up to two blocks LSG attention is dense attention (modeling.lsg_attention.dense_attend), so this graph runs
the same model with dense attention on the unpadded tokens (lsg_base.use_dense_attention): the outputs of
model.onnx at the cost of the input's own length, where model.onnx pads every row to whole blocks and a
16-token text costs as much as a 128-token one. Made for exports with a sentence_embedding output (`lsg-export
serve` embeds short texts with it), optimised, converted and quantised as model.onnx, validated against the
LSG PyTorch model at lengths up to its limit, recorded in export.json's "short_graph"; longer inputs fail in
the graph (its position table stops at the limit)."""
import copy
from dataclasses import replace

from ..modeling.lsg_base import dense_limit, use_dense_attention
from .parts import weight_bytes

SHORT_FILE = "model_short.onnx"


def short_limit(config, seq):
    """The longest input of the short graph of an export of `seq` tokens (config: the model's)."""
    return min(seq, dense_limit(config))


def dense_copy(module):
    """A copy of the encoder's TaskModule computing dense attention on unpadded tokens."""
    short = copy.deepcopy(module)
    use_dense_attention(short.model.config)
    return short


def short_part(part, short, limit, example):
    """The GraphPart of model_short.onnx (module `short`, a dense_copy) from model.onnx's `part`: the same
    inputs, outputs and dims."""
    return replace(part, name="short", file=SHORT_FILE, module=short, example=example, weight_bytes=weight_bytes(short),
                   doc=f"{part.doc}: dense attention for inputs of at most {limit} tokens")


def short_lengths(limit, block_size):
    """Validation lengths of the short graph: the ends, the block boundary and the limit."""
    return sorted({n for n in (1, 2, block_size - 1, block_size, block_size + 1, limit - 1, limit) if 1 <= n <= limit})


def short_rows(report, limit):
    """The rows of the short graph's ValidationReport, named for it (they join model.onnx's report)."""
    return [replace(row, output=f"{row.output} ({SHORT_FILE}, <= {limit})") for row in report.rows]


__all__ = ["SHORT_FILE", "dense_copy", "short_limit", "short_part", "short_lengths", "short_rows"]
