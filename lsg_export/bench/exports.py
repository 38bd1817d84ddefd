"""The ONNX exports the ort-* backends run: the target export for its own kind, the others made with
lsg_export.onnx.export_onnx into <model>/bench-exports/<backend> and reused while up to date (the
backends of one attention kind share one torch.export: <model>/bench-exports/graphs). A backend
with `requantize` (an int8 method `lsg-export onnx` does not offer) gets the float32 export quantised
in place with those quantize_int8 options, then validated again.

Up to date: same export options, task, weights (modification time) and exporter code (a hash of
lsg_export/onnx and lsg_export/modeling), same library versions; recorded in bench-stamp.json."""
import json

from ..errors import LSGExportError
from ..graph_list import check_graph_files, graph_list, single_graph
from ..sources import EXPORT_JSON, read_export_json
from .backends import BACKENDS

CACHE_DIR = "bench-exports"
GRAPHS_DIR = "graphs"  # under CACHE_DIR: the exported graphs the backends' exports share (onnx/graph_cache.py)
STAMP = "bench-stamp.json"


def export_options(name, device):
    """export_onnx options of backend `name`'s graph: optimised and validated for the device it runs on."""
    return {**BACKENDS[name].export, "device": device}


def stamp_for(name, target, device):
    from ..onnx.graph_cache import code_hash, weights_mtime
    from ..onnx.record import versions
    return {"backend": name, "options": export_options(name, device), "requantize": BACKENDS[name].requantize,
            "task": target.task, "seq": target.info.max_length,
            "weights_mtime": weights_mtime(target.model), "code": code_hash(), "versions": versions()}


def validation_lengths(info):
    """A couple of small lengths across the first block boundaries: the bench only needs a sound graph."""
    block = info.config["block_size"]
    return sorted({min(n, info.max_length) for n in (block // 2 + 1, 2 * block + 3)})


def cached_export(name, target, device, status):
    """The folder of an up-to-date export for backend `name` (made now if missing or stale)."""
    from ..onnx import export_onnx
    folder = target.model / CACHE_DIR / (name if device == "cpu" or name == "ort-fp16" else f"{name}-{device}")
    stamp = stamp_for(name, target, device)
    try:
        if json.loads((folder / STAMP).read_text()) == stamp:
            check_graph_files(folder, graph_list(read_export_json(folder)))
            return folder
    except (OSError, ValueError, LSGExportError):
        pass
    status(f"exporting {name} (first run: cached in {folder})")
    lengths, step = validation_lengths(target.info), lambda message: status(f"exporting {name}: {message}")
    result = export_onnx(target.model, folder, seq=target.info.max_length, task=target.task, force=True,
                         lengths=lengths, status=step, graph_cache=target.model / CACHE_DIR / GRAPHS_DIR,
                         short_graph=False, **export_options(name, device))  # the bench runs model.onnx
    if not result.passed:
        raise LSGExportError(f"its export failed validation: {result.report.failure_message()}")
    if BACKENDS[name].requantize:
        requantize(folder, lengths, BACKENDS[name].requantize, step)
    (folder / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    return folder


def requantize(folder, lengths, options, status):
    """Quantise the float32 export in `folder` in place with quantize_int8(**options); export.json records it
    and a new validation (reported, never enforced, as for every int8 export)."""
    from ..onnx import validate_onnx
    from ..onnx.export import final_graph
    from ..onnx.optimize import quantize_int8
    from ..onnx.record import write_json
    status(f"quantizing the MatMul weights to int8 ({', '.join(f'{k}={v}' for k, v in options.items())})")
    meta = read_export_json(folder)
    graph = single_graph(folder, graph_list(meta), "requantizing takes an export of one graph")
    meta["quantize"] = quantize_int8(folder / graph.file, graph.external_data, **options)
    final = final_graph(folder / graph.file)
    meta.update(precision="int8", final_graph=final)
    for entry in meta.get("graphs") or []:
        if isinstance(entry, dict) and entry.get("file") == graph.file:
            entry.update(final)
    write_json(folder / EXPORT_JSON, meta)
    validate_onnx(folder, lengths=lengths, status=status)


def prepare_exports(names, target, device="cpu", status=None):
    """{backend: export folder or LSGExportError} for the backends in `names` that run an export (ort-*, and
    ov-* on ort-gather's graph), each export made once; backends that cannot run here (backends.unavailable)
    get none.

    A backend whose export cannot be made is reported as failed by the caller; the others go on."""
    from .backends import unavailable
    status = status or (lambda message: None)
    made = {}  # export kind -> folder or error
    if target.export is not None:
        made[target.export_kind] = target.export
    folders = {}
    for name in names:
        kind = BACKENDS[name].runs_export
        if kind is None or unavailable(name) is not None:
            continue
        if kind not in made:
            try:
                made[kind] = cached_export(kind, target, device, status)
            except LSGExportError as error:
                made[kind] = error
            except Exception as error:  # an exporter bug must not stop the other backends
                made[kind] = LSGExportError(f"its export failed ({type(error).__name__}: {error})")
        folders[name] = made[kind]
    return folders
