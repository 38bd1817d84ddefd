"""ONNX export of converted LSG models: one graph valid at every length up to --seq.

    from lsg_export.onnx import export_onnx, validate_onnx
    result = export_onnx("lsg-all-MiniLM-L6-v2-4096", seq=4096, optimize="O2")
    report = validate_onnx(result.path, lengths=[1, 500, 4096])

Modules: tasks (task inference, input / output names, dummy inputs), export (torch -> ONNX and the
attention kinds), optimize (fusions, float16, int8), validate (comparison and tables),
pipeline (the two entry points above: one loop over the graph parts, parts.py, of a layout, encoder_only or
seq2seq), settings (validation settings), record (export.json), attention_kinds (gather / custom-op
attention), custom_op (the torch op and its ONNX node), loading (optimum's ORTModel classes on an export,
custom ops registered).
"""
from .attention_kinds import ATTENTION_KINDS, AttentionKind, register_attention_kind
from .loading import load_ort_model
from .pipeline import ExportResult, export_onnx, validate_onnx
from .tasks import TASKS
from .validate import ValidationReport

__all__ = ["export_onnx", "validate_onnx", "load_ort_model", "ExportResult", "ValidationReport", "TASKS",
           "ATTENTION_KINDS", "AttentionKind", "register_attention_kind"]
