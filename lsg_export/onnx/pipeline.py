"""export_onnx and validate_onnx: the steps of `lsg-export onnx` and `lsg-export validate`."""
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import LSGExportError
from ..folders import atomic_folder, check_output
from ..quiet import quiet_transformers
from ..sources import EXPORT_JSON, read_export_json
from .export import (DEFAULT_OPSET, EXTERNAL_DATA_BYTES, check_opset, export_graph, final_graph, finish_graph,
                     get_attention_kind, graph_domains)
from .optimize import check_options, optimize_graph, quantize_int8, to_float16
from .tasks import (TASKS, TaskModule, infer_task, input_axes, input_names, make_inputs, output_names,
                    read_model_folder)
from .validate import DEFAULT_ATOL, compare, default_lengths, default_text, document_inputs, make_session, parse_lengths

MODEL_FILE = "model.onnx"
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


def load_torch_model(info):
    """The PyTorch model of a converted folder (the package's own LSG classes: no remote code), fp32, eval."""
    try:
        with quiet_transformers():
            model = info.family.model_class(info.head).from_pretrained(str(info.path), dtype=torch.float32)
    except (OSError, RuntimeError, ValueError, TypeError) as error:
        raise LSGExportError(f"{info.path}: cannot load the model ({str(error).splitlines()[0][:200]})") from None
    return model.eval()


def limit_positions(model, rows):
    """Keep the first `rows` rows of the position table: inputs longer than --seq then fail in the graph
    (the position lookup) instead of running unvalidated. Results at lengths <= --seq are unchanged."""
    for module in model.modules():
        table = getattr(module, "position_embeddings", None)
        if isinstance(table, torch.nn.Embedding) and table.num_embeddings > rows:
            smaller = torch.nn.Embedding(rows, table.embedding_dim, padding_idx=table.padding_idx)
            smaller.weight.data = table.weight.data[:rows].clone()
            module.position_embeddings = smaller
            for name in ("position_ids", "token_type_ids"):
                buffer = getattr(module, name, None)
                if isinstance(buffer, torch.Tensor) and buffer.dim() == 2 and buffer.shape[1] > rows:
                    persistent = name not in module._non_persistent_buffers_set
                    module.register_buffer(name, buffer[:, :rows].clone(), persistent=persistent)


def versions():
    import importlib.metadata as metadata
    found = {}
    for name in ("lsg-export", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript",
                 "optimum", "optimum-onnx"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def example_length(block_size, seq):
    """The traced example: more than 2 blocks and not a multiple of the block (any length is correct)."""
    return max(1, min(seq, 2 * block_size + block_size // 2 + 1))


def write_side_files(info, folder, seq):
    """config.json (no auto_map: the folder holds no modeling code) and the tokenizer files."""
    config = dict(info.config)
    config.pop("auto_map", None)
    config["max_position_embeddings"] = seq + info.family.position_offset
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for path in info.path.iterdir():
        if path.is_file() and path.name not in NOT_COPIED and not path.name.endswith(NOT_COPIED_SUFFIXES):
            shutil.copy(path, folder / path.name)
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        data = json.loads(tokenizer_config.read_text())
        data["model_max_length"] = seq
        tokenizer_config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


HISTORY = 50  # validation runs kept in export.json's "validations" (the oldest dropped first)


def record_validation(meta, report, run):
    """Store a validation in export.json's data: `validation` is the latest run (what deploy and serve gate
    on), `validations` the history, each with when it ran, which command (`run`) and its inputs."""
    entry = {"run": run, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **report.to_dict()}
    history = [*meta.get("validations", []), {k: v for k, v in entry.items() if k != "rows"}]
    meta["validation"], meta["validations"] = entry, history[-HISTORY:]
    return meta


def write_json(path, data):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def resolve_atol(atol, fp16, quantize, optimize=None):
    """(atol, enforced): 1e-4 in float32, 1e-3 with O3's Gelu approximation, 1e-2 in float16; int8 only reports."""
    if atol is not None and atol < 0:
        raise LSGExportError(f"--atol must be positive, got {atol}")
    default = DEFAULT_ATOL["fp16" if fp16 else ("O3" if optimize == "O3" else "fp32")]
    return atol if atol is not None else default, quantize is None


def check_lengths(info, seq, lengths, batch_size):
    """(seq, validation lengths) of an export request: --seq within the position table (default: all of
    it), then check_validation."""
    seq = info.max_length if seq is None else seq
    if not isinstance(seq, int) or not 1 <= seq <= info.max_length:
        raise LSGExportError(f"--seq {seq} is outside 1..{info.max_length}, the lengths {info.path}'s position "
                             f"table covers")
    return seq, check_validation(info, seq, lengths, batch_size)


def check_validation(info, seq, lengths, batch_size):
    """Validation lengths of a graph valid up to seq: --lengths within 1..seq (default: around the block
    boundaries), with a positive --batch-size."""
    lengths = parse_lengths(lengths, seq) if lengths else default_lengths(info.config["block_size"], seq)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LSGExportError(f"--batch-size must be positive, got {batch_size}")
    return lengths


def export_onnx(model, output=None, *, seq=None, task="auto", opset=DEFAULT_OPSET, attention="gather",
                optimize="none", fp16=False, quantize=None, device="cpu", atol=None, lengths=None, batch_size=2,
                merge_decoders=None, text=None, force=False, status=None):
    """Export a converted LSG folder to ONNX, validate it against PyTorch, write OUT.

    model: the converted folder.
    output: OUT (default MODEL/onnx). seq: the longest input (default: the model's maximum).
    merge_decoders: encoder-decoders only, also write decoder_model_merged.onnx (default: yes).
    text: a text file whose tokens the validation runs on (default: GPL-3 for int8, else random ids).
    Returns an ExportResult; `result.passed` is False when validation found a difference above atol
    (OUT is written all the same, with the failure in export.json). LSGExportError for bad input."""
    status = status or (lambda message: None)
    started = time.perf_counter()
    info = read_model_folder(model)
    if info.family.seq2seq:  # encoder-decoders: three graphs in optimum's seq2seq layout (seq2seq.py)
        from .seq2seq import export_seq2seq
        return export_seq2seq(info, output, seq=seq, task=task, opset=opset, attention=attention, optimize=optimize,
                              fp16=fp16, quantize=quantize, device=device, atol=atol, lengths=lengths,
                              batch_size=batch_size, merge_decoders=merge_decoders, text=text, force=force, status=status,
                              started=started)
    if merge_decoders is not None:
        raise LSGExportError(f"--merge-decoders is for encoder-decoders (bart, mbart, pegasus); {info.path} holds a "
                             f"{info.family.class_name(info.head)}")
    task = infer_task(info, task)
    kind = get_attention_kind(attention)
    check_opset(opset, kind)
    check_options(optimize, fp16, quantize, device)
    if device == "cuda" and "CUDAExecutionProvider" not in kind.providers:
        raise LSGExportError(f"the {kind.name} attention does not run on CUDA")
    seq, lengths = check_lengths(info, seq, lengths, batch_size)
    atol, enforced = resolve_atol(atol, fp16, quantize, optimize)
    output = check_output(Path(output) if output else info.path / "onnx", force)
    ids, label = document_inputs(info.path, text or default_text(quantize, info.path))

    status(f"loading {info.path} ({info.family.class_name(info.head)}, task {task})")
    torch_model = load_torch_model(info)
    limit_positions(torch_model, seq + info.family.position_offset)
    module = TaskModule(torch_model, task).eval()
    names, outputs = input_names(info.family), output_names(task)
    example = make_inputs(info, task, 2, example_length(info.config["block_size"], seq))
    example = {name: example[name] for name in names}
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = weight_bytes > EXTERNAL_DATA_BYTES

    with atomic_folder(output, force) as tmp:
        path = tmp / MODEL_FILE
        status(f"exporting to ONNX (opset {opset}, {kind.name} attention)")
        export_seconds = export_graph(module, example, path, output_names=outputs, kind=kind, opset=opset,
                                      external_data=external, device=device)
        status("checking the graph (onnx.checker, symbolic shape inference)")
        proto = finish_graph(path, input_axes=input_axes(task), output_axes=TASKS[task].output_axes,
                             external_data=external,
                             doc=f"LSG {info.family.class_name(info.head)} ({task}) by lsg-export")
        domains = graph_domains(proto)
        foreign = [d for d in domains if d not in kind.domains]
        if foreign:
            raise LSGExportError(f"the {kind.name} attention graph uses ops outside its domains: {', '.join(foreign)}")
        graph = {"nodes": len(proto.graph.node), "domains": domains, "ir_version": proto.ir_version,
                 "external_data": external}
        del proto
        steps = {"optimize": None, "fp16": False, "quantize": None}
        if optimize != "none":
            status(f"optimizing ({optimize})")
            steps["optimize"] = optimize_graph(path, optimize, info.config, device, external, kind.setup_session)
        if fp16:
            status("converting to float16")
            steps["fp16"] = to_float16(path, external)
        if quantize:
            status("quantizing the MatMul weights to int8")
            steps["quantize"] = quantize_int8(path, external)
        final = final_graph(path)
        write_side_files(info, tmp, seq)

        session = make_session(path, device, kind)
        report = compare(session, module, info, task, outputs, lengths, batch_size, atol, enforced, ids=ids,
                         inputs_label=label, progress=status)
        del session
        meta = {
            "model": str(info.path.resolve()), "architecture": info.family.class_name(info.head),
            "model_type": info.family.model_type, "task": task, "seq": seq, "opset": opset,
            "attention": kind.name, "custom_ops": kind.custom_ops, "device": device, "inputs": names, "outputs": outputs,
            "input_axes": list(input_axes(task)), "lsg": info.lsg_options, "graph": graph, **steps,
            "final_graph": final,
            "precision": "fp16" if fp16 else ("int8" if quantize else "fp32"),
            "versions": versions(),
            "seconds": {"export": round(export_seconds, 2), "total": round(time.perf_counter() - started, 2)},
            "validation_lengths": lengths,
        }
        write_json(tmp / EXPORT_JSON, record_validation(meta, report, "export"))
    return ExportResult(output, task, report, meta)


def read_export_folder(folder):
    folder = Path(folder)
    meta = read_export_json(folder)
    if not meta.get("seq2seq") and not (folder / MODEL_FILE).is_file():  # seq2seq: encoder_model.onnx, ...
        raise LSGExportError(f"{folder}: no {MODEL_FILE}")
    return meta


def export_lengths(meta):
    """The lengths an export was validated at when it was written (folders from before the history: the
    lengths of their recorded validation)."""
    history = meta.get("validations") or [meta.get("validation") or {}]
    return meta.get("validation_lengths") or history[0].get("lengths")


def validation_settings(folder, meta, model, lengths, batch_size, atol, device):
    """What a re-validation of an export folder runs with, checked: (info of the PyTorch model, lengths,
    atol, enforced, device), from the arguments or else from export.json (`meta`)."""
    source = model or meta.get("model")
    if source and model is None and not Path(source).is_dir():
        raise LSGExportError(f"the PyTorch model {source} named in {folder / EXPORT_JSON} is gone: pass --model")
    info = read_model_folder(source)
    lengths = check_validation(info, int(meta["seq"]), lengths or export_lengths(meta), batch_size)
    fp16, quantize = meta.get("fp16"), meta.get("quantize")
    atol, enforced = resolve_atol(atol, fp16, quantize, (meta.get("optimize") or {}).get("level"))
    device = device or meta.get("device", "cpu")
    check_options("none", bool(fp16), quantize and "int8", device)
    return info, lengths, atol, enforced, device


def validate_onnx(folder, *, model=None, lengths=None, batch_size=2, text=None, atol=None, device=None,
                  status=None, record=True):
    """Rerun the comparison of an exported folder with its PyTorch model; returns a ValidationReport.

    model: the converted PyTorch folder (default: the one export.json names). lengths: list or
    "1,500,4096" (default: the export's). text: a text file whose tokens replace the random ids.
    record: store the result in export.json."""
    status = status or (lambda message: None)
    folder = Path(folder)
    meta = read_export_folder(folder)
    if meta.get("seq2seq"):
        from .seq2seq import validate_seq2seq
        return validate_seq2seq(folder, meta, model=model, lengths=lengths, batch_size=batch_size, text=text,
                                atol=atol, device=device, status=status, record=record)
    info, lengths, atol, enforced, device = validation_settings(folder, meta, model, lengths, batch_size, atol, device)
    task, seq = meta["task"], int(meta["seq"])
    ids, label = document_inputs(folder, text or default_text(meta.get("quantize"), folder))

    status(f"loading {info.path}")
    torch_model = load_torch_model(info)
    limit_positions(torch_model, seq + info.family.position_offset)
    module = TaskModule(torch_model, task).eval()
    session = make_session(folder / MODEL_FILE, device, get_attention_kind(meta.get("attention", "gather")))
    report = compare(session, module, info, task, meta["outputs"], lengths, batch_size, atol, enforced, ids=ids,
                     inputs_label=label,
                     progress=status)
    if record:
        write_json(folder / EXPORT_JSON, record_validation(meta, report, "validate"))
    return report
