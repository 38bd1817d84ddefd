"""An encoder-decoder export folder (optimum's seq2seq layout), checked and read for serving: its graphs as
export.json lists them (the encoder, and the merged decoder when there is one, else the decoder and the
decoder with past), their inputs and outputs, its generation settings and its tokenizer."""
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LSGExportError
from ..graph_list import check_graph_files, find_graph, graph_list
from ..sources import EXPORT_JSON
from .decoding import DecodingError, GenerationSettings
from .folder import TOKENIZER_FILE, check_validated, read_graph, read_meta, slug

SPLIT_ROLES = ("encoder", "decoder", "decoder_with_past")
MERGED_ROLES = ("encoder", "decoder_merged")


def is_seq2seq(meta):
    """Whether an export.json describes an encoder-decoder export."""
    return bool(meta.get("seq2seq")) or any(g.name == "encoder" for g in graph_list(meta))


@dataclass
class GraphFiles:
    """One graph of the export: its entry, inputs / outputs (TensorSpec), external data files, op domains."""
    entry: object
    inputs: list
    outputs: list
    data_files: list = field(default_factory=list)
    domains: list = field(default_factory=list)

    @property
    def files(self):
        return [self.entry.file, *self.data_files]


@dataclass
class Seq2SeqExport:
    path: Path
    meta: dict
    graphs: dict  # role ("encoder", "decoder_merged" or "decoder" + "decoder_with_past") -> GraphFiles
    settings: GenerationSettings
    config: dict

    @property
    def seq(self):
        return int(self.meta["seq"])

    @property
    def merged(self):
        return "decoder_merged" in self.graphs

    @property
    def needs_custom_ops(self):
        from ..ops.session import DOMAIN
        return bool(self.meta.get("custom_ops")) or self.meta.get("attention") == "custom-op" or any(
            DOMAIN in graph.domains for graph in self.graphs.values())

    @property
    def tokenizer_file(self):
        return self.path / TOKENIZER_FILE

    @property
    def decoder_shape(self):
        """(layers, heads, head dim) of the decoder's key / value states."""
        heads = int(self.config["decoder_attention_heads"])
        return int(self.config["decoder_layers"]), heads, int(self.config["d_model"]) // heads

    def default_name(self):
        path = self.path.resolve()
        return slug(path.parent.name if path.name in ("onnx", "") else path.name)


def open_seq2seq_export(folder, allow_unvalidated=False):
    """Seq2SeqExport of `folder`; LSGExportError when a graph, config.json or tokenizer.json is missing, export.json
    and a graph disagree, the generation config sets what the decoding loop does not implement, or validation
    failed / never ran (unless allow_unvalidated)."""
    path = Path(folder)
    meta = read_meta(path)
    listed = graph_list(meta)
    merged = find_graph(listed, "decoder_merged") is not None
    entries = [find_graph(listed, role) for role in (MERGED_ROLES if merged else SPLIT_ROLES)]
    if any(entry is None for entry in entries):
        names = ", ".join(g.name for g in listed)
        raise LSGExportError(f"{path}: an encoder-decoder export needs the graphs encoder and decoder_merged, or "
                             f"encoder, decoder and decoder_with_past; {EXPORT_JSON} lists {names}")
    check_graph_files(path, entries)
    for name, why in (("config.json", "export it again with `lsg-export onnx`"),
                      (TOKENIZER_FILE, "serving text needs the model's fast tokenizer: save it in the converted "
                                       "folder (tokenizer.save_pretrained) and export again, or copy it here")):
        if not (path / name).is_file():
            raise LSGExportError(f"{path}: no {name}; {why}")
    graphs = {}
    for entry in entries:
        inputs, outputs, data_files, domains = read_graph(path, entry.file)
        for kind, specs in (("inputs", inputs), ("outputs", outputs)):
            named = getattr(entry, kind)
            if named is not None and list(named) != [s.name for s in specs]:
                raise LSGExportError(f"{path}: {EXPORT_JSON} names the {kind} {list(named)} but {entry.file} has "
                                     f"{[s.name for s in specs]}; export it again")
        graphs[entry.name] = GraphFiles(entry, inputs, outputs, data_files, domains)
    try:
        config = json.loads((path / "config.json").read_text())
        settings = GenerationSettings.from_folder(path).check()
    except (ValueError, DecodingError) as error:
        raise LSGExportError(f"{path}: {error}") from None
    check_validated(path, meta, allow_unvalidated)
    return Seq2SeqExport(path, meta, graphs, settings, config)
