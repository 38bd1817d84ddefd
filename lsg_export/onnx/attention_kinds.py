"""Attention kinds: how LSGAttention becomes ONNX (not to be confused with the benchmark's backends,
bench/backends.py, which are ways of running a model).

An export swaps every LSGAttention's `block_attention` (or its whole `forward_tokens`) for the
kind's function while torch.export traces the model, so the kind of attention in the graph is one
switch (`--attention`):

  gather     standard ONNX ops only: every block's keys read by one Gather (attention.py);
  custom-op  one ai.lsg.LSGAttention node per layer, run by the custom-op library (custom_op.py).
"""
import contextlib
import functools
from dataclasses import dataclass, field

from ..errors import LSGExportError
from ..modeling.lsg_attention import LSGAttention
from . import custom_op
from .attention import gather_block_attention

MIN_OPSET = 18  # torch.onnx's dynamo exporter emits opset 18 and above


@dataclass(frozen=True)
class AttentionKind:
    """One way of putting LSG attention in the graph.

    block_attention: replaces every LSGAttention's `block_attention` while exporting (None: keep the
        module's own), e.g. a function calling a torch custom op; also what export_block_attention exports;
    forward_tokens: f(module, q, k, v, key_mask, heads) replacing every LSGAttention's forward_tokens
        while exporting (None: keep it);
    translations: torch.onnx's custom_translation_table entries (that custom op -> an ONNX node);
    domains: the op domains the raw graph may use ('' is the standard one);
    providers: the ONNX Runtime execution providers it runs on;
    setup_session: called with the SessionOptions of every session that runs the graph (e.g. to
        register a custom-op library);
    custom_ops: what export.json records about a library the graph needs (None: none)."""
    name: str
    description: str
    block_attention: object = None
    forward_tokens: object = None
    translations: dict = field(default_factory=dict)
    min_opset: int = MIN_OPSET
    domains: tuple = ("", "ai.onnx")
    providers: tuple = ("CPUExecutionProvider", "CUDAExecutionProvider")
    setup_session: object = None
    custom_ops: dict = None

    @contextlib.contextmanager
    def installed(self, model):
        modules = [m for m in model.modules() if isinstance(m, LSGAttention)]
        saved = [m.block_attention for m in modules]
        try:
            for m in modules:
                if self.block_attention is not None:
                    m.block_attention = self.block_attention
                if self.forward_tokens is not None:
                    m.forward_tokens = functools.partial(self.forward_tokens, m)  # shadows the method
            yield
        finally:
            for m, original in zip(modules, saved):
                m.block_attention = original
                m.__dict__.pop("forward_tokens", None)


ATTENTION_KINDS = {}


def register_attention_kind(kind):
    ATTENTION_KINDS[kind.name] = kind
    return kind


def get_attention_kind(name):
    try:
        return ATTENTION_KINDS[name]
    except KeyError:
        raise LSGExportError(f"unknown attention kind {name!r}; available: {', '.join(ATTENTION_KINDS)}") from None


register_attention_kind(AttentionKind(
    "gather", "LSG attention from standard ONNX ops only: every block's keys read by one Gather (attention.py)",
    block_attention=gather_block_attention))
register_attention_kind(AttentionKind(
    "custom-op", f"LSG attention as one {custom_op.DOMAIN}.{custom_op.LSG_OP_TYPE} node per layer, run by the "
    "custom-op library (lsg-export build-ops; custom_op.py)",
    block_attention=custom_op.custom_op_block_attention,
    forward_tokens=custom_op.custom_op_forward_tokens,
    translations={custom_op.TORCH_OP: custom_op.translate_block_sparse_attention,
                  custom_op.LSG_TORCH_OP: custom_op.translate_lsg_attention},
    domains=("", "ai.onnx", custom_op.DOMAIN),
    setup_session=custom_op.register_library,
    custom_ops=custom_op.LIBRARY_RECORD))
