"""Open an exported folder with optimum, the custom-op library registered when the graph needs it.

    from lsg_export.onnx import load_ort_model
    model = load_ort_model("minilm-onnx")          # ORTModelForFeatureExtraction, ...ForMaskedLM, ..., ForSeq2SeqLM
    outputs = model(**tokenizer(text, return_tensors="pt"))

The same by hand: `ORTModelFor<Task>.from_pretrained(OUT, session_options=lsg_export.ops.session_options_with_ops())`.
"""
from ..compat import require_optimum
from ..errors import LSGExportError
from ..graph_list import find_graph, graph_list, single_graph
from ..ops.session import explain_missing_ops, session_options_with_ops
from .pipeline import read_export_folder
from .tasks import TASKS


def load_ort_model(folder, provider="CPUExecutionProvider", session_options=None, **kwargs):
    """optimum.onnxruntime's ORTModelFor<task> of an export folder (task and graphs from its export.json).

    A graph with the custom op (export.json "custom_ops") gets the library registered in its session
    options (built first if missing). kwargs go to from_pretrained."""
    require_optimum("load_ort_model")
    import optimum.onnxruntime

    meta = read_export_folder(folder)
    graphs = graph_list(meta)
    if find_graph(graphs, "encoder") is not None:  # optimum's seq2seq layout: ORTModelForSeq2SeqLM
        from .seq2seq import load_seq2seq_model
        return load_seq2seq_model(folder, provider=provider, session_options=session_options, **kwargs)
    graph = single_graph(folder, graphs, "optimum loads one graph of a task, or the seq2seq layout")
    task = TASKS.get(meta.get("task"))
    if task is None:
        raise LSGExportError(f"{folder}: export.json names no task optimum can load ({meta.get('task')!r})")
    if meta.get("custom_ops"):
        session_options = session_options_with_ops(session_options)
    with explain_missing_ops():
        return getattr(optimum.onnxruntime, task.ort_class).from_pretrained(
            str(folder), provider=provider, session_options=session_options, **{"file_name": graph.file, **kwargs})
