"""A graph part: one ONNX graph of an export, as the export pipeline (pipeline.py) needs it described.

A layout (encoder_only.EncoderOnly: one part; seq2seq.Seq2Seq: encoder, decoder, decoder with past, then
the merged decoder made from the last two) gives its parts; pipeline.py exports, finishes, optimises,
converts, quantises and records each of them the same way, then has the layout validate the folder.
What a layout has (both are classes with these names):

    label, task, external_data (whether weights above 2 GB may go to external data), side_files (model
    folder files copied beside the graphs); serves(family), reads(graph list): which exports it makes
    and reads; for_export(info, task, merge_decoders, pooling) and for_folder(info, meta, graph list): checked
    instances; load_model(seq): the PyTorch model; parts(model, seq): [GraphPart]; short_part(model, seq): the
    GraphPart of model_short.onnx (short_graph.py) or None; combine(folder, status): [(name, file)] of graphs
    made from the written parts; record(): its export.json keys;
    validate(folder, model, settings, kind, graphs, ids, inputs_label, status): a ValidationReport.
"""
from dataclasses import dataclass

import torch


@dataclass
class GraphPart:
    name: str  # export.json's graph name: model, encoder, decoder, decoder_with_past
    file: str
    module: torch.nn.Module  # what torch.export traces: module(*example.values()) -> the outputs in order
    example: dict  # {argument name: example tensor}, in the module's argument order
    inputs: list  # ONNX input names, in the same order
    outputs: list  # ONNX output names
    input_axes: dict  # {ONNX input name: dim names (None: keep the exporter's)}
    output_axes: list  # per output: dim names (None: keep)
    optimizer_config: dict  # onnxruntime.transformers' heads and width (optimize.heads_and_width reads it)
    model_type: str = "bert"  # onnxruntime.transformers' model type ("bart": dense decoders)
    dynamic_dims: dict = None  # {argument name: its symbolic dims} (default: every dim)
    weight_bytes: int = 0  # above export.EXTERNAL_DATA_BYTES the weights go to external data
    doc: str = ""

    @property
    def input_names(self):
        """{torch argument name: ONNX input name} where they differ."""
        return {arg: name for arg, name in zip(self.example, self.inputs) if arg != name}


def example_length(block_size, seq):
    """The traced example: more than 2 blocks and not a multiple of the block (any length is correct)."""
    return max(1, min(seq, 2 * block_size + block_size // 2 + 1))


def weight_bytes(*modules):
    """Bytes of the distinct tensors of `modules` (tied weights once)."""
    tensors = {t.data_ptr(): t for m in modules for t in [*m.parameters(), *m.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())
