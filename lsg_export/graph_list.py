"""The graphs of an export folder, as its export.json lists them: what deploy, serve, the bench and the
loading read instead of knowing the layouts.

export.json's "graphs" is a list, one entry per ONNX file, in the order they were written:

    {"name": "model", "file": "model.onnx", "inputs": [...], "outputs": [...], "external_data": false, ...}

Names: "model" (the one graph of an encoder export); "encoder", "decoder", "decoder_with_past" and
"decoder_merged" (an encoder-decoder in optimum's seq2seq layout). Folders written before the list
existed get it derived from their other keys (graph_list). Light: no ONNX or torch import.
"""
from dataclasses import dataclass
from pathlib import Path

from .errors import LSGExportError

MODEL_FILE = "model.onnx"
SEQ2SEQ_FILES = {"encoder": "encoder_model.onnx", "decoder": "decoder_model.onnx",
                 "decoder_with_past": "decoder_with_past_model.onnx", "decoder_merged": "decoder_model_merged.onnx"}


@dataclass(frozen=True)
class GraphEntry:
    name: str
    file: str
    inputs: tuple = None  # ONNX input names (None: not recorded, a folder from before the list)
    outputs: tuple = None
    external_data: bool = False


def graph_list(meta):
    """[GraphEntry] of an export.json (dict)."""
    listed = meta.get("graphs")
    if isinstance(listed, list):
        return [GraphEntry(g["name"], g["file"], _names(g.get("inputs")), _names(g.get("outputs")),
                           bool(g.get("external_data"))) for g in listed]
    if meta.get("seq2seq"):  # before the list: the three graphs (+ the merged decoder), named by file
        by_file = {file: name for name, file in SEQ2SEQ_FILES.items()}
        files = meta.get("files") or [*list(SEQ2SEQ_FILES.values())[:3],
                                      *[SEQ2SEQ_FILES["decoder_merged"]] * bool(meta.get("merged_decoder"))]
        return [GraphEntry(by_file.get(file, Path(file).stem), file) for file in files]
    return [GraphEntry("model", MODEL_FILE, _names(meta.get("inputs")), _names(meta.get("outputs")),
                       bool((meta.get("graph") or {}).get("external_data")))]


def _names(values):
    return tuple(values) if values is not None else None


def find_graph(graphs, name):
    """The entry named `name`, or None."""
    return next((g for g in graphs if g.name == name), None)


def check_graph_files(folder, graphs):
    """LSGExportError naming the listed graph files missing from `folder`."""
    missing = [g.file for g in graphs if not (Path(folder) / g.file).is_file()]
    if missing:
        raise LSGExportError(f"{folder}: no {', '.join(missing)}")


def single_graph(folder, graphs, refusal):
    """The one graph of a single-graph export; LSGExportError for a folder of several, ending with `refusal`
    (what takes one graph only, e.g. 'deploy and serve take an export of one graph (an encoder's)')."""
    if len(graphs) != 1:
        raise LSGExportError(f"{folder} holds {len(graphs)} graphs ({', '.join(g.file for g in graphs)}); {refusal}")
    return graphs[0]
