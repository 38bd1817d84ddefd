"""An export folder (what `lsg-export onnx` writes), checked and read for serving.

Everything a server needs is read from the files, never retyped: the inputs and outputs (names,
Open Inference Protocol datatypes, dims with -1 for symbolic ones) come from the ONNX graph, the
external data files from its initializers, the custom-op need from export.json and the graph's
op domains. It does not import the ONNX export code (torch.onnx, onnxscript): `lsg-export serve`
imports it.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LSGExportError
from ..graph_list import GraphEntry, graph_list, single_graph
from ..sources import EXPORT_JSON, read_export_json

TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # Open Inference Protocol (KServe v2 / Triton) name: INT64, FP32, ...
    shape: tuple  # dims of the graph, -1 where symbolic
    dim_names: tuple  # the symbolic names ("batch_size", "sequence_length"), None for fixed dims

    def metadata(self):
        """The v2 model-metadata entry."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class ExportFolder:
    path: Path
    meta: dict  # export.json
    inputs: list  # TensorSpec per graph input
    outputs: list  # TensorSpec per graph output
    data_files: list = field(default_factory=list)  # external data files, relative to the folder
    domains: list = field(default_factory=list)  # op domains of the graph
    graph: GraphEntry = None  # the graph, as export.json lists it

    @property
    def model_file(self):
        return self.path / self.graph.file

    @property
    def seq(self):
        return int(self.meta["seq"])

    @property
    def needs_custom_ops(self):
        from ..ops.session import DOMAIN
        return bool(self.meta.get("custom_ops")) or self.meta.get("attention") == "custom-op" or DOMAIN in self.domains

    @property
    def tokenizer_file(self):
        path = self.path / TOKENIZER_FILE
        return path if path.is_file() else None

    @property
    def config(self):
        try:
            return json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError):
            return {}

    def default_name(self):
        """A model / InferenceService name from the folder ('<converted>/onnx' -> the converted folder's)."""
        path = self.path.resolve()
        base = path.parent.name if path.name in ("onnx", "") else path.name
        return slug(base)


def slug(text):
    """A DNS-1035 label (Kubernetes object names; also a safe Triton model name)."""
    out = "".join(c if c.isalnum() else "-" for c in text.lower())
    out = "-".join(part for part in out.split("-") if part)[:63].rstrip("-")
    if not out or not out[0].isalpha():
        out = ("m-" + out)[:63].rstrip("-")
    return out


def check_name(name):
    if name != slug(name):
        raise LSGExportError(f"--name {name!r} is not usable as a Kubernetes / Triton model name: lower-case letters, "
                             f"digits and '-', starting with a letter, at most 63 characters (e.g. {slug(name)!r})")
    return name


def tensor_specs(values):
    """TensorSpec of graph inputs / outputs (onnx ValueInfoProto)."""
    import onnx
    from tritonclient.utils import np_to_triton_dtype

    specs = []
    for value in values:
        tensor = value.type.tensor_type
        datatype = np_to_triton_dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        dims = tensor.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
        names = tuple(d.dim_param if d.HasField("dim_param") else None for d in dims)
        specs.append(TensorSpec(value.name, datatype, shape, names))
    return specs


def _external_files(graph):
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data
    found = set()
    for tensor in graph.initializer:
        if uses_external_data(tensor):
            found.add(ExternalDataInfo(tensor).location)
    for node in graph.node:  # initializers of subgraphs (If / Loop bodies)
        for attribute in node.attribute:
            for sub in [attribute.g] * attribute.HasField("g") + list(attribute.graphs):
                found |= _external_files(sub)
    return found


def validation_run_label(validation):
    """ ' (validate, 2026-12-05 13:40 UTC, text GPL-3, lengths 1, 500, 4096)': which run a verdict comes from."""
    parts = [validation.get("run"), validation.get("when"), validation.get("inputs"),
             "lengths " + ", ".join(map(str, validation["lengths"])) if validation.get("lengths") else None]
    parts = [part for part in parts if part]
    return f" ({', '.join(parts)})" if parts else ""


def read_meta(path):
    """export.json of an export folder, with its seq."""
    meta = read_export_json(path)
    if not isinstance(meta, dict) or "seq" not in meta:
        raise LSGExportError(f"{path}: incomplete export, {EXPORT_JSON} without seq; export it again with "
                             f"`lsg-export onnx`")
    return meta


def read_graph(path, file):
    """(inputs, outputs, external data files, op domains) of the ONNX file `file` of the folder `path`, read
    without its weights; LSGExportError for an unreadable file or missing external data."""
    import onnx

    try:
        proto = onnx.load(str(path / file), load_external_data=False)
    except Exception as error:  # protobuf DecodeError, truncated file, ...
        raise LSGExportError(f"{path / file}: not a readable ONNX model ({type(error).__name__})") from None
    data_files = sorted(_external_files(proto.graph))
    absent = [name for name in data_files if not (path / name).is_file()]
    if absent:
        raise LSGExportError(f"{path}: the graph's external data {', '.join(absent)} is missing")
    domains = sorted({node.domain or "" for node in proto.graph.node})
    return tensor_specs(proto.graph.input), tensor_specs(proto.graph.output), data_files, domains


def open_export(folder, allow_unvalidated=False):
    """ExportFolder of `folder`; LSGExportError when a file is missing, export.json and the graph
    disagree, or validation failed / never ran (unless allow_unvalidated)."""
    path = Path(folder)
    meta = read_meta(path)
    graph = single_graph(path, graph_list(meta),
                         "deploy and serve take an export of one graph (an encoder's) or an encoder-decoder's")
    short = (meta.get("short_graph") or {}).get("file")  # onnx/short_graph.py: `serve` embeds short texts with it
    missing = [name for name in (graph.file, "config.json", *[short] * bool(short)) if not (path / name).is_file()]
    if missing:
        raise LSGExportError(f"{path}: incomplete export, {', '.join(missing)} missing; export it again with "
                             f"`lsg-export onnx`")
    inputs, outputs, data_files, domains = read_graph(path, graph.file)
    for kind, specs in (("inputs", inputs), ("outputs", outputs)):
        named = getattr(graph, kind)
        if named is not None and list(named) != [s.name for s in specs]:
            raise LSGExportError(f"{path}: {EXPORT_JSON} names the {kind} {list(named)} but {graph.file} has "
                                 f"{[s.name for s in specs]}; export it again")
    check_validated(path, meta, allow_unvalidated)
    return ExportFolder(path, meta, inputs, outputs, data_files, domains, graph)


def check_validated(path, meta, allow_unvalidated):
    """The validation gate: LSGExportError when export.json's latest validation failed or never ran."""
    validation = meta.get("validation") or {}
    if validation.get("passed") is not True and not allow_unvalidated:
        why = (f"failed validation at lengths {validation.get('failed_lengths')} in its latest run"
               f"{validation_run_label(validation)}" if validation.get("passed") is False
               else "has no validation result")
        raise LSGExportError(f"{path} {why} (see its {EXPORT_JSON}); rerun `lsg-export validate {path}`, or pass "
                             f"--allow-unvalidated to deploy it anyway")
