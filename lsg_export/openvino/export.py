"""`lsg-export openvino`: an encoder's gather export as an OpenVINO IR folder, validated against PyTorch.

The graph converted is, by default, the export's model exported anew with its block attention as ONNX Attention,
which OpenVINO fuses (sdpa.py); --attention gather converts the export's own graph. The folder holds
openvino_model.xml / .bin (the layout optimum-intel's OVModel classes and OpenVINO's read_model take), the
export's side files (config, tokenizer, sentence-transformers pipeline) and openvino_export.json: where it came
from, its weights and the validation. With --weights int8 the MatMul and embedding weights are int8 and the
activations' group size rides in the model (weights.py), so a plain `core.compile_model(path)` runs it as
validated; the inference precision is OpenVINO's default for the CPU (bf16 where native, else f32) unless
--precision names one. --precision mixed writes bf16 into the graph where it is harmless (mixed_precision.py):
that folder compiles at f32 (openvino_export.json's compile_config says so).

Validation runs the compiled model as the ONNX export's is run (onnx/validate.compare): float32 is held to
the export's atol; bf16 and int8 are reported (cosines), as ONNX int8 is, on real text by default."""
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import LSGExportError
from ..folders import atomic_folder, check_output
from ..graph_list import graph_list, single_graph
from ..onnx.record import record_validation, write_json
from ..onnx.short_graph import SHORT_FILE
from ..sources import EXPORT_JSON, read_export_json
from .mixed_precision import PRODUCTS, explicit_bf16
from .sdpa import ATTENTIONS, export_sdpa_graph
from .runtime import (PRECISIONS, Session, bf16_support, compile_graph, compile_precision, describe,
                      native_precision, openvino_missing)
from .weights import GROUP_SIZE, MODES, check_keep_float_count, compress_int8, matmuls_by_weight

IR_FILE = "openvino_model.xml"
RECORD_FILE = "openvino_export.json"
WEIGHTS = (*MODES, "none")
SDPA_CACHE = ".openvino-sdpa"  # in an ONNX export: the bench's SDPA graph (dot-named: not a side file)
# what of the ONNX folder is not the model's (the short graph: `serve`'s, for ONNX Runtime)
SKIPPED = {EXPORT_JSON, "bench-stamp.json", "bench-exports", SHORT_FILE}


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
    """'f32', 'bf16' or 'mixed': `precision`, or OpenVINO's default here for None / 'auto'; bf16 and mixed only
    where the CPU has native bf16."""
    if precision in (None, "auto"):
        return native_precision()
    if precision not in PRECISIONS:
        raise LSGExportError(f"--precision {precision!r}: give {', '.join(PRECISIONS)}")
    if precision in ("bf16", "mixed"):
        native, evidence = bf16_support()
        if not native:
            raise LSGExportError(f"--precision {precision}: this CPU has no native bf16 ({evidence})")
    return precision


def export_openvino(folder, output=None, *, attention="sdpa", weights="int8", group_size=GROUP_SIZE, keep_float=0,
                    precision=None, model=None, lengths=None, batch_size=2, text=None, force=False, status=None):
    """Write the OpenVINO IR folder of the ONNX export `folder` (default OUT: FOLDER-openvino) and validate it.

    attention: sdpa (the export's model exported anew with its block attention as ONNX Attention, which
    OpenVINO fuses: sdpa.py) or gather (the export's own graph). weights: int8 (asymmetric, per output
    channel), int8-sym or none (float32). group_size: input channels per step of the activations' run-time
    quantization (int8 only). keep_float: the number of MatMul weights whose int8 alone loses most on the
    validation text that stay float (int8 only). precision: auto, f32 or bf16, what OpenVINO computes the rest
    in while validating (the folder does not fix it), or mixed: bf16 written into the graph where it is
    harmless (mixed_precision.py), the folder compiled at f32 (its compile_config). model: the converted
    PyTorch folder (default: the one the export's export.json names). Returns an OpenVINOResult."""
    status = status or (lambda message: None)
    if attention not in ATTENTIONS:
        raise LSGExportError(f"--attention {attention!r}: give {', '.join(ATTENTIONS)}")
    if weights not in WEIGHTS:
        raise LSGExportError(f"--weights {weights!r}: give {', '.join(WEIGHTS)}")
    if not isinstance(group_size, int) or group_size < 1:
        raise LSGExportError(f"--group-size {group_size}: give a number of input channels >= 1")
    if not isinstance(keep_float, int) or keep_float < 0 or (keep_float and weights == "none"):
        raise LSGExportError(f"--keep-float {keep_float}: give a count >= 0, with int8 weights")
    if precision == "mixed" and weights != "none":
        raise LSGExportError("--precision mixed: give --weights none (the weight MatMuls run in bf16)")
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
    if keep_float:  # before exporting and ranking: the export's graph has the same weights as the SDPA graph
        check_keep_float_count(keep_float, matmuls_by_weight(ov.Core().read_model(str(folder / graph.file))))
    reduced = weights != "none" or precision != "f32"
    document = document_inputs(folder, text or default_text(reduced, folder))  # (ids or None, label)
    source = SourceModel.of(folder, meta, lengths, batch_size, status, model)
    with atomic_folder(output, force) as tmp, tempfile.TemporaryDirectory(prefix="lsg-openvino-") as scratch:
        onnx_graph = source.graph(attention, Path(scratch), folder / graph.file, status)
        status(f"reading {onnx_graph.name}")
        model = ov.Core().read_model(str(onnx_graph))
        record = {"mode": "none"}
        if precision == "mixed":
            status("writing bf16 into the graph (--precision mixed)")
            counts = explicit_bf16(model)
            record["bf16"] = {kind: n for (kind, where), n in sorted(counts.items())
                              if kind in PRODUCTS and where == "bf16"}  # the products written in bf16
        if weights != "none":
            kept = rank_for_keep_float(folder, onnx_graph, meta, keep_float, weights, group_size, document[0],
                                       status, precision)
            status(f"compressing the weights to {weights}")
            model, count = compress_int8(model, weights, group_size, keep_float=kept.matmuls if kept else ())
            record = {"mode": weights, "nncf": MODES[weights], "per": "output channel", "matrices": count,
                      "activations": {"quantized": "at run time, per token", "group_size": group_size}}
            if kept:
                record["kept_float"] = {**kept.record(), "ranked_at": precision}
        ov.save_model(model, str(tmp / IR_FILE), compress_to_fp16=False)  # float32 stays float32
        del model
        copy_side_files(folder, tmp, graph)
        report, note = validate_ir(tmp, source, meta, precision, weights, batch_size, document, status)
        info = {"format": "openvino", "source": str(folder.resolve()), "model": meta.get("model"),
                "task": meta.get("task"), "inputs": meta.get("inputs"), "outputs": meta.get("outputs"),
                "pooling": meta.get("pooling"), "seq": meta.get("seq"), "lsg": meta.get("lsg"), "graph": IR_FILE,
                "attention": attention, "weights": record, "precision": precision,
                "compile_config": {"INFERENCE_PRECISION_HINT": compile_precision(precision)}
                if precision == "mixed" else {}, "validated_with": note, "versions": openvino_versions()}
        info = record_validation(info, report, "export")
        write_json(tmp / RECORD_FILE, info)
    return OpenVINOResult(output, report, info)


@dataclass
class SourceModel:
    """The PyTorch model of an ONNX export (its export.json's model folder): what the SDPA graph is exported
    from and what the IR is validated against (loaded once for both)."""
    settings: object  # onnx.settings.ValidationSettings
    layout: object
    module: object
    seq: int

    @classmethod
    def of(cls, folder, meta, lengths, batch_size, status, model=None):
        from ..onnx.pipeline import layout_for_folder
        from ..onnx.settings import validation_settings
        settings = validation_settings(folder, meta, model, lengths, batch_size, None, "cpu")
        layout = layout_for_folder(folder, settings.info, meta, graph_list(meta))
        status(f"loading {settings.info.path}")
        seq = int(meta["seq"])
        return cls(settings, layout, layout.load_model(seq), seq)

    def graph(self, attention, scratch, own_graph, status):
        """The ONNX graph OpenVINO converts: the export's own (gather) or the SDPA graph made in `scratch`."""
        if attention == "gather":
            return own_graph
        return export_sdpa_graph(self.module, self.layout, self.seq, scratch / "model.onnx", status)


def cached_sdpa_graph(folder, meta, status=None):
    """The SDPA graph of the ONNX export `folder`, made once into FOLDER/.openvino-sdpa (what the bench's ov-*
    backends run; a remade export is a new folder, so the cache goes with it)."""
    status = status or (lambda message: None)
    cache = Path(folder) / SDPA_CACHE
    if not (cache / "model.onnx").is_file():
        source = SourceModel.of(Path(folder), meta, None, 2, status)
        with atomic_folder(cache, True) as tmp:
            export_sdpa_graph(source.module, source.layout, source.seq, tmp / "model.onnx", status)
    return cache / "model.onnx"


def rank_for_keep_float(folder, graph_path, meta, count, weights, group_size, document, status, precision=None):
    """The KeptFloat of --keep-float `count` (None for 0): the weights of the ONNX graph at `graph_path` (the
    one OpenVINO converts) ranked on the first tokens of `document`
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
    return choose_kept_float(graph_path, count, feeds, meta["outputs"][0], weights, group_size, precision, status)


def copy_side_files(folder, target, graph):
    """Everything of the ONNX folder but its graph, its record and the bench's caches."""
    graph_files = {graph.file, graph.file + ".data", graph.file + "_data"}
    for entry in folder.iterdir():
        if entry.name in SKIPPED or entry.name in graph_files or entry.name.startswith("."):
            continue
        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target / entry.name)


def validate_ir(ir_folder, source, meta, precision, weights, batch_size, document, status):
    """(ValidationReport, what was compiled): the IR in `ir_folder` against `source`'s PyTorch model, on
    `document` ((validate.Document or None, its label))."""
    from ..onnx.validate import compare
    reduced = weights != "none" or precision != "f32"
    settings = source.settings
    ids, label = document
    compiled = compile_graph(ir_folder / IR_FILE, None, compile_precision(precision))
    session = Session(compiled)
    report = compare(session, source.module, settings.info, source.layout.task, meta["outputs"], settings.lengths,
                     batch_size, settings.atol, settings.enforced and not reduced, ids=ids, inputs_label=label,
                     progress=status)
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
