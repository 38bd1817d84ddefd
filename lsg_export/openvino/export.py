"""`lsg-export openvino`: an encoder export's gather graph as an OpenVINO IR folder, validated against PyTorch.

The folder holds openvino_model.xml / .bin (the layout optimum-intel's OVModel classes and OpenVINO's
read_model take), the export's side files (config, tokenizer, sentence-transformers pipeline) and
openvino_export.json: where it came from, its weights and the validation. With --weights int8 the MatMul and
embedding weights are int8 and the activations' group size rides in the model (weights.py), so a plain
`core.compile_model(path)` runs it as validated; the inference precision is OpenVINO's default for the CPU
(bf16 where native, else f32) unless --precision names one.

Validation runs the compiled model as the ONNX export's is run (onnx/validate.compare): float32 is held to
the export's atol; bf16 and int8 are reported (cosines), as ONNX int8 is, on real text by default."""
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import LSGExportError
from ..folders import atomic_folder, check_output
from ..graph_list import graph_list, single_graph
from ..onnx.record import record_validation, write_json
from ..sources import EXPORT_JSON, read_export_json
from .runtime import Session, bf16_support, compile_graph, describe, native_precision, openvino_missing
from .weights import GROUP_SIZE, MODES, compress_int8

IR_FILE = "openvino_model.xml"
RECORD_FILE = "openvino_export.json"
WEIGHTS = (*MODES, "none")
SKIPPED = {EXPORT_JSON, "bench-stamp.json", "bench-exports"}  # what of the ONNX folder is not the model's


@dataclass
class OpenVINOResult:
    path: Path
    report: object  # onnx.validate.ValidationReport
    info: dict  # openvino_export.json

    @property
    def passed(self):
        return self.report.passed


def check_source(folder, meta):
    """The graph of `folder` OpenVINO takes: an encoder's single float32 gather graph."""
    graph = single_graph(folder, graph_list(meta), "lsg-export openvino takes an encoder's export (one graph)")
    if meta.get("attention", "gather") != "gather":
        raise LSGExportError(f"{folder} holds the {meta['attention']} attention: OpenVINO runs the gather graph "
                             f"(lsg-export onnx --attention gather)")
    if meta.get("quantize") or meta.get("fp16") or meta.get("optimize"):
        raise LSGExportError(f"{folder} is an optimized or reduced-precision export: OpenVINO compresses and "
                             f"optimizes the plain float32 gather graph itself (lsg-export onnx without "
                             f"--optimize / --quantize / --fp16)")
    return graph


def resolve_precision(precision):
    """'f32' or 'bf16': `precision`, or OpenVINO's default here for None / 'auto'; bf16 only where native."""
    if precision in (None, "auto"):
        return native_precision()
    if precision not in ("f32", "bf16"):
        raise LSGExportError(f"--precision {precision!r}: give auto, f32 or bf16")
    if precision == "bf16":
        native, evidence = bf16_support()
        if not native:
            raise LSGExportError(f"--precision bf16: this CPU has no native bf16 ({evidence})")
    return precision


def export_openvino(folder, output=None, *, weights="int8", group_size=GROUP_SIZE, keep_float=0, precision=None,
                    lengths=None, batch_size=2, text=None, force=False, status=None):
    """Write the OpenVINO IR folder of the ONNX export `folder` (default OUT: FOLDER-openvino) and validate it.

    weights: int8 (asymmetric, per output channel), int8-sym or none (float32). group_size: input channels per
    step of the activations' run-time quantization (int8 only). keep_float: the number of MatMul weights whose
    int8 alone loses most on the validation text that stay float (int8 only). precision: auto, f32 or bf16,
    what OpenVINO computes the rest in while validating (the folder does not fix it). Returns an
    OpenVINOResult."""
    status = status or (lambda message: None)
    if weights not in WEIGHTS:
        raise LSGExportError(f"--weights {weights!r}: give {', '.join(WEIGHTS)}")
    if not isinstance(group_size, int) or group_size < 1:
        raise LSGExportError(f"--group-size {group_size}: give a number of input channels >= 1")
    if not isinstance(keep_float, int) or keep_float < 0 or (keep_float and weights == "none"):
        raise LSGExportError(f"--keep-float {keep_float}: give a count >= 0, with int8 weights")
    missing = openvino_missing(("openvino", "nncf") if weights != "none" else ("openvino",))
    if missing:
        raise LSGExportError(missing)
    folder = Path(folder)
    meta = read_export_json(folder)
    graph = check_source(folder, meta)
    precision = resolve_precision(precision)
    output = check_output(Path(output) if output else folder.with_name(folder.name + "-openvino"), force)
    if output.resolve() == folder.resolve():
        raise LSGExportError(f"-o {output} is the ONNX export itself: name another folder")
    import openvino as ov

    from ..onnx.validate import default_text, document_inputs
    reduced = weights != "none" or precision == "bf16"
    document = document_inputs(folder, text or default_text(reduced, folder))  # (ids or None, label)
    with atomic_folder(output, force) as tmp:
        status(f"reading {folder / graph.file}")
        model = ov.Core().read_model(str(folder / graph.file))
        record = {"mode": "none"}
        if weights != "none":
            kept = rank_for_keep_float(folder, graph, meta, keep_float, weights, group_size, document[0], status,
                                       precision)
            status(f"compressing the weights to {weights}")
            model, count = compress_int8(model, weights, group_size, keep_float=kept.matmuls if kept else ())
            record = {"mode": weights, "nncf": MODES[weights], "per": "output channel", "matrices": count,
                      "activations": {"quantized": "at run time, per token", "group_size": group_size}}
            if kept:
                record["kept_float"] = {**kept.record(), "ranked_at": precision}
        ov.save_model(model, str(tmp / IR_FILE), compress_to_fp16=False)  # float32 stays float32
        copy_side_files(folder, tmp, graph)
        report, note = validate_ir(tmp, folder, meta, precision, weights, lengths, batch_size, document, status)
        info = {"format": "openvino", "source": str(folder.resolve()), "model": meta.get("model"),
                "task": meta.get("task"), "inputs": meta.get("inputs"), "outputs": meta.get("outputs"),
                "pooling": meta.get("pooling"), "seq": meta.get("seq"), "lsg": meta.get("lsg"), "graph": IR_FILE,
                "weights": record, "validated_with": note, "versions": openvino_versions()}
        info = record_validation(info, report, "export")
        write_json(tmp / RECORD_FILE, info)
    return OpenVINOResult(output, report, info)


def rank_for_keep_float(folder, graph, meta, count, weights, group_size, document, status, precision=None):
    """The KeptFloat of --keep-float `count` (None for 0): the weights ranked on the first tokens of `document`
    (the validation text, a validate.Document; random ids for None), as `lsg-export onnx --keep-float` ranks
    ONNX Runtime's int8, the rest of the graph at `precision` (None: OpenVINO's default here)."""
    if not count:
        return None
    from types import SimpleNamespace

    from ..onnx.int8_sensitivity import RANKING_TOKENS, ranking_feeds
    from ..sources import read_config_dict
    from .weights import choose_kept_float
    inputs = SimpleNamespace(get_inputs=lambda: [SimpleNamespace(name=name) for name in meta["inputs"]])
    vocab_size = read_config_dict(str(folder)).get("vocab_size", 1000)
    feeds = ranking_feeds(inputs, document, vocab_size, min(RANKING_TOKENS, int(meta["seq"])))
    kept = choose_kept_float(folder / graph.file, count, feeds, meta["outputs"][0], weights, group_size, precision,
                             status)
    if count > len(kept.ranking):
        raise LSGExportError(f"--keep-float {count}: the graph has {len(kept.ranking)} MatMul weights")
    return kept


def copy_side_files(folder, target, graph):
    """Everything of the ONNX folder but its graph, its record and the bench's caches."""
    graph_files = {graph.file, graph.file + ".data", graph.file + "_data"}
    for entry in folder.iterdir():
        if entry.name in SKIPPED or entry.name in graph_files or entry.name.startswith("."):
            continue
        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target / entry.name)


def validate_ir(ir_folder, folder, meta, precision, weights, lengths, batch_size, document, status):
    """(ValidationReport, what was compiled): the IR in `ir_folder` against the PyTorch model of the export, on
    `document` ((validate.Document or None, its label))."""
    from ..onnx.pipeline import layout_for_folder
    from ..onnx.settings import validation_settings
    from ..onnx.validate import compare
    reduced = weights != "none" or precision == "bf16"
    settings = validation_settings(folder, meta, None, lengths, batch_size, None, "cpu")
    ids, label = document
    layout = layout_for_folder(folder, settings.info, meta, graph_list(meta))
    status(f"loading {settings.info.path}")
    module = layout.load_model(int(meta["seq"]))
    compiled = compile_graph(ir_folder / IR_FILE, None, precision)
    session = Session(compiled)
    report = compare(session, module, settings.info, layout.task, meta["outputs"], settings.lengths, batch_size,
                     settings.atol, settings.enforced and not reduced, ids=ids, inputs_label=label, progress=status)
    return report, describe(compiled, int8=weights != "none")


def openvino_versions():
    """The versions the folder was made with."""
    import importlib.metadata as metadata
    found = {}
    for name in ("lsg-export", "openvino", "nncf"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


__all__ = ["export_openvino", "OpenVINOResult", "IR_FILE", "RECORD_FILE"]
