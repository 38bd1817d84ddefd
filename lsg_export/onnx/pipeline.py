"""export_onnx and validate_onnx: the steps of `lsg-export onnx` and `lsg-export validate`, one loop over
the graph parts of a layout (encoder_only.EncoderOnly: model.onnx; seq2seq.Seq2Seq: encoder, decoder,
decoder with past, then the merged decoder).

Every part is exported (torch.export -> ONNX, rewritten for ONNX Runtime), finished (names, dims, checks),
optimised, converted and quantised as asked, then recorded in export.json's graph list; the layout makes
the graphs built from the parts (the merged decoder) and validates the folder against PyTorch."""
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LSGExportError
from ..folders import atomic_folder, check_output
from ..graph_list import MODEL_FILE, check_graph_files, graph_list
from ..sentence_pipeline import copy_pipeline
from ..sources import EXPORT_JSON, read_export_json
from .encoder_only import EncoderOnly, limit_positions, load_torch_model  # noqa: F401 (the Python API's names)
from .export import (DEFAULT_OPSET, EXTERNAL_DATA_BYTES, check_opset, export_graph, final_graph, finish_graph,
                     get_attention_kind, graph_domains)
from .graph_cache import GraphCache
from .int8_sensitivity import choose_kept_float
from .optimize import check_options, optimize_graph, quantize_int8, to_float16
from .record import record_validation, versions, write_json  # noqa: F401 (bench/exports.py)
from .seq2seq import Seq2Seq
from .settings import ValidationSettings, check_lengths, resolve_atol, validation_settings
from .tasks import read_model_folder
from .validate import default_text, document_inputs, make_session

LAYOUTS = (Seq2Seq, EncoderOnly)
NOT_COPIED = {"config.json", "README.md", "generation_config.json", "export.json"}
NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".py", ".index.json", ".onnx", ".data", ".pt", ".h5", ".msgpack")


@dataclass
class ExportResult:
    path: Path
    task: str
    report: object  # ValidationReport
    info: dict = field(default_factory=dict)  # the content of export.json

    @property
    def passed(self):
        return self.report.passed


def write_side_files(info, folder, seq, extra=()):
    """config.json (no auto_map: the folder holds no modeling code), the tokenizer files, the layout's
    `extra` files of the model folder and its sentence-transformers pipeline (max_seq_length seq), with
    which `SentenceTransformer(OUT, backend="onnx")` loads OUT."""
    config = dict(info.config)
    config.pop("auto_map", None)
    config["max_position_embeddings"] = seq + info.family.position_offset
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for path in info.path.iterdir():
        if path.is_file() and (path.name in extra or path.name not in NOT_COPIED
                               and not path.name.endswith(NOT_COPIED_SUFFIXES)):
            shutil.copy(path, folder / path.name)
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        data = json.loads(tokenizer_config.read_text())
        data["model_max_length"] = seq
        tokenizer_config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    copy_pipeline(info.path, folder, seq)


def external_data(parts):
    """{file: whether the part's weights go to external data} (above EXTERNAL_DATA_BYTES: protobuf's
    limit is 2 GB)."""
    return {part.file: part.weight_bytes > EXTERNAL_DATA_BYTES for part in parts}


def check_external_data(layout, parts):
    """external_data(parts), refused before exporting for a layout without external data."""
    external = external_data(parts)
    for part in parts:
        if external[part.file] and not layout.external_data:
            raise LSGExportError(f"the {part.name} weights take {part.weight_bytes / 1e9:.1f} GB: {layout.label} "
                                 f"graphs above {EXTERNAL_DATA_BYTES / 1e9:.1f} GB (external data) are not "
                                 f"supported yet")
    return external


def export_parts(parts, info, folder, seq, kind, opset, status, device="cpu"):
    """torch.export -> ONNX of each part into `folder`, finished and checked; returns {file: its record as
    exported ("nodes", "domains", "ir_version", "external_data", "seconds")}. info and seq: the model folder
    and --seq the parts come from (what a cache of exported graphs, the tests', keys on)."""
    external = external_data(parts)
    records = {}
    for part in parts:
        path = folder / part.file
        status(f"exporting {part.file} (opset {opset}, {kind.name} attention)")
        seconds = export_graph(part.module, part.example, path, output_names=part.outputs, kind=kind, opset=opset,
                               external_data=external[part.file], dynamic_dims=part.dynamic_dims, device=device)
        status(f"checking {part.file} (onnx.checker, symbolic shape inference)")
        proto = finish_graph(path, input_axes=part.input_axes, output_axes=part.output_axes,
                             external_data=external[part.file], doc=part.doc, input_names=part.input_names)
        domains = graph_domains(proto)
        foreign = [d for d in domains if d not in kind.domains]
        if foreign:
            raise LSGExportError(f"the {kind.name} attention graph uses ops outside its domains: {', '.join(foreign)}")
        records[part.file] = {"nodes": len(proto.graph.node), "domains": domains, "ir_version": proto.ir_version,
                              "external_data": external[part.file], "seconds": round(seconds, 2)}
        del proto
    return records


def exported_parts(parts, info, folder, seq, kind, opset, status, device, graphs, cache):
    """export_parts, or copies of the same graphs from `cache` (a GraphCache) when it keeps them."""
    if cache is None:
        return export_parts(parts, info, folder, seq, kind, opset, status, device)
    stamp = cache.stamp(info, graphs, [part.file for part in parts], kind, device, opset, seq)
    records = cache.restore(stamp, folder)
    if records is not None:
        status(f"reusing the {kind.name} graphs exported earlier ({cache.folder})")
        return records
    records = export_parts(parts, info, folder, seq, kind, opset, status, device)
    cache.store(stamp, folder, records)
    return records


def process_parts(parts, folder, external, kind, optimize, fp16, quantize, device, status, keep_float=None):
    """--optimize, --fp16 and --quantize on each part; returns export.json's "optimize", "fp16" and "quantize"
    (one part: its summaries; several: totals, with each graph's summary under "graphs").
    keep_float: (count, document ids or None, vocab size, seq) of --keep-float (one part only)."""
    optimized, quantized, converted = {}, {}, False
    for part in parts:
        path, data = folder / part.file, external[part.file]
        if optimize != "none":
            status(f"optimizing {part.file} ({optimize})")
            optimized[part.file] = optimize_graph(path, optimize, part.optimizer_config, device, data,
                                                  kind.setup_session, model_type=part.model_type)
        if fp16:
            status(f"converting {part.file} to float16")
            converted = to_float16(path, data)
        if quantize:
            kept = None
            if keep_float and keep_float[0]:
                count, ids, vocab_size, seq = keep_float
                kept = choose_kept_float(path, count, data, lambda p: make_session(p, device, kind), ids, vocab_size,
                                         seq, status)
            status(f"quantizing the MatMul weights of {part.file} to int8")
            quantized[part.file] = quantize_int8(path, data, keep_float=kept)
    steps = {"optimize": None, "fp16": converted, "quantize": None}
    if len(parts) == 1:
        steps.update(optimize=optimized.get(parts[0].file), quantize=quantized.get(parts[0].file))
        return steps

    def total(summaries, key):
        return sum(summary[key] for summary in summaries.values())

    if optimized:
        steps["optimize"] = {"level": optimize, "nodes_before": total(optimized, "nodes_before"),
                             "nodes_after": total(optimized, "nodes_after"), "graphs": optimized}
    if quantized:
        first = quantized[parts[0].file]
        steps["quantize"] = {**{k: v for k, v in first.items() if k != "quantized_matmuls"},
                             "quantized_matmuls": total(quantized, "quantized_matmuls"), "graphs": quantized}
    return steps


def check_keep_float(keep_float, quantize, layout):
    if not keep_float:
        return
    if keep_float < 0 or not quantize:
        raise LSGExportError(f"--keep-float {keep_float}: give a count >= 0, with --quantize int8")
    if isinstance(layout, Seq2Seq):
        raise LSGExportError("--keep-float is for encoder exports (one graph); an encoder-decoder's graphs are "
                             "quantized whole")


def graph_entry(folder, name, file, exported):
    """export.json's graph-list entry of a written graph: its names, inputs and outputs as the file has them,
    how it was exported (`exported`: export_parts' record, None for a graph made from others) and what the
    file holds after every step (final_graph)."""
    import onnx
    final = final_graph(folder / file)
    proto = onnx.load(str(folder / file), load_external_data=False)
    entry = {"name": name, "file": file, "inputs": [v.name for v in proto.graph.input],
             "outputs": [v.name for v in proto.graph.output],
             "external_data": bool(exported and exported["external_data"])}
    if exported:
        entry["seconds"] = exported["seconds"]
    return {**entry, **final}


def summary_keys(exported, entries):
    """export.json's keys from before the graph list, kept for their readers: one graph: "graph" (as
    exported) and "final_graph"; several: "graph" with the exported nodes and the final domains of all."""
    if len(entries) == 1:
        record = next(iter(exported.values()))
        final = {k: v for k, v in entries[0].items() if k in ("nodes", "domains", "ir_version", "opsets")}
        return {"graph": {k: record[k] for k in ("nodes", "domains", "ir_version", "external_data")},
                "final_graph": final}
    return {"graph": {"nodes": sum(record["nodes"] for record in exported.values()),
                      "domains": sorted({d for entry in entries for d in entry["domains"]})}}


def layout_for_model(info, task, merge_decoders, pooling=None):
    layout = next(layout for layout in LAYOUTS if layout.serves(info.family))
    return layout.for_export(info, task, merge_decoders, pooling)


def layout_for_folder(folder, info, meta, graphs):
    for layout in LAYOUTS:
        if layout.reads(graphs):
            return layout.for_folder(info, meta, graphs)
    raise LSGExportError(f"{folder}: {EXPORT_JSON} lists graphs no layout reads: {', '.join(g.name for g in graphs)}")


def export_onnx(model, output=None, *, seq=None, task="auto", opset=DEFAULT_OPSET, attention="gather",
                optimize="none", fp16=False, quantize=None, device="cpu", atol=None, lengths=None, batch_size=2,
                merge_decoders=None, pooling=None, text=None, force=False, graph_cache=None, keep_float=0,
                short_graph=True, status=None):
    """Export a converted LSG folder to ONNX, validate it against PyTorch, write OUT.

    model: the converted folder.
    output: OUT (default MODEL/onnx). seq: the longest input (default: the model's maximum).
    merge_decoders: encoder-decoders only, also write decoder_model_merged.onnx (default: yes).
    pooling: mean, cls, max or none: the sentence_embedding output of feature-extraction (default: the
    checkpoint's sentence-transformers pooling, else none).
    text: a text file whose tokens the validation runs on (default: GPL-3 for int8, else random ids).
    keep_float: with quantize int8, the number of MatMul weights whose int8 loses most on the validation text
    that stay float32 (int8_sensitivity.py; encoder exports).
    short_graph: also write model_short.onnx, the same model for inputs of at most two LSG blocks at the cost of
    their own length (short_graph.py), where the export has a sentence_embedding output and no keep_float.
    graph_cache: a folder keeping the exported graphs for the next export of this model that differs only
    in optimisation, precision or validation (graph_cache.GraphCache; the bench's exports share one).
    Returns an ExportResult; `result.passed` is False when validation found a difference above atol
    (OUT is written all the same, with the failure in export.json). LSGExportError for bad input."""
    status = status or (lambda message: None)
    started = time.perf_counter()
    info = read_model_folder(model)
    layout = layout_for_model(info, task, merge_decoders, pooling)
    kind = get_attention_kind(attention)
    check_opset(opset, kind)
    check_options(optimize, fp16, quantize, device)
    check_keep_float(keep_float, quantize, layout)
    if device == "cuda" and "CUDAExecutionProvider" not in kind.providers:
        raise LSGExportError(f"the {kind.name} attention does not run on CUDA")
    seq, lengths = check_lengths(info, seq, lengths, batch_size)
    atol, enforced = resolve_atol(atol, fp16, quantize, optimize)
    settings = ValidationSettings(info, lengths, batch_size, atol, enforced, device)
    output = check_output(Path(output) if output else info.path / "onnx", force)
    ids, label = document_inputs(info.path, text or default_text(quantize, info.path))

    status(f"loading {info.path} ({info.family.class_name(info.head)}, task {layout.task})")
    torch_model = layout.load_model(seq)
    parts = layout.parts(torch_model, seq)
    external = check_external_data(layout, parts)
    with atomic_folder(output, force) as tmp:
        cache = GraphCache(graph_cache) if graph_cache else None
        described = {"task": layout.task, **layout.record()}  # what the graph cache keys on
        exported = exported_parts(parts, info, tmp, seq, kind, opset, status, device, described, cache)
        steps = process_parts(parts, tmp, external, kind, optimize, fp16, quantize, device, status,
                              (keep_float, ids, info.config.get("vocab_size"), seq))
        short = layout.short_part(torch_model, seq) if short_graph and not keep_float else None
        if short:
            dense = get_attention_kind("gather")  # plain ops: the attention is dense
            exported.update(exported_parts([short], info, tmp, seq, dense, opset, status, device, described, cache))
            short_steps = process_parts([short], tmp, external_data([short]), kind, optimize, fp16, quantize, device,
                                        status)
        written = [(part.name, part.file) for part in parts] + layout.combine(tmp, status)
        entries = [graph_entry(tmp, name, file, exported.get(file)) for name, file in written]
        write_side_files(info, tmp, seq, layout.side_files)
        meta = {
            "model": str(info.path.resolve()), "architecture": info.family.class_name(info.head),
            "model_type": info.family.model_type, "task": layout.task, **layout.record(), "seq": seq, "opset": opset,
            "attention": kind.name, "custom_ops": kind.custom_ops, "device": device,
            **summary_keys({part.file: exported[part.file] for part in parts}, entries), "graphs": entries, **steps,
            "precision": "fp16" if fp16 else ("int8" if quantize else "fp32"), "versions": versions(),
        }
        if short:
            meta["short_graph"] = {"max_tokens": layout.short, **graph_entry(tmp, short.name, short.file,
                                                                               exported[short.file]), **short_steps}
        write_json(tmp / EXPORT_JSON, meta)  # optimum's loading in the validation reads it
        report = layout.validate(tmp, torch_model, settings, kind, graph_list(meta), ids=ids, inputs_label=label,
                                 status=status)
        meta["seconds"] = {"export": round(sum(record["seconds"] for record in exported.values()), 2),
                           "total": round(time.perf_counter() - started, 2)}
        meta["validation_lengths"] = lengths
        write_json(tmp / EXPORT_JSON, record_validation(meta, report, "export"))
    return ExportResult(output, layout.task, report, meta)


def read_export_folder(folder):
    """export.json of an export folder whose listed graphs are all there."""
    folder = Path(folder)
    meta = read_export_json(folder)
    check_graph_files(folder, graph_list(meta))
    return meta


def validate_onnx(folder, *, model=None, lengths=None, batch_size=2, text=None, atol=None, device=None,
                  status=None, record=True):
    """Rerun the comparison of an exported folder with its PyTorch model; returns a ValidationReport.

    model: the converted PyTorch folder (default: the one export.json names). lengths: list or
    "1,500,4096" (default: the export's). text: a text file whose tokens replace the random ids.
    record: store the result in export.json."""
    status = status or (lambda message: None)
    folder = Path(folder)
    meta = read_export_folder(folder)
    graphs = graph_list(meta)
    settings = validation_settings(folder, meta, model, lengths, batch_size, atol, device)
    layout = layout_for_folder(folder, settings.info, meta, graphs)
    ids, label = document_inputs(folder, text or default_text(meta.get("quantize"), folder))

    status(f"loading {settings.info.path}")
    torch_model = layout.load_model(int(meta["seq"]))
    report = layout.validate(folder, torch_model, settings, get_attention_kind(meta.get("attention", "gather")), graphs,
                             ids=ids, inputs_label=label, status=status)
    if record:
        write_json(folder / EXPORT_JSON, record_validation(meta, report, "validate"))
    return report


__all__ = ["export_onnx", "validate_onnx", "ExportResult", "read_export_folder", "MODEL_FILE"]
