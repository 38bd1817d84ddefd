"""run_bench: resolve the target, make the exports, run each backend in its own process, gather the cells."""
import os
import tempfile
import time
from dataclasses import dataclass, field

from ..errors import LSGExportError
from ..onnx.validate import DEFAULT_TEXT  # the quality columns' document where no --text is given: GPL-3
from .backends import BACKENDS, select_backends, skipped_for_seq2seq, unavailable
from .measure import Cell, pool, run_in_process
from .target import choose_lengths, parse_ints, resolve_target
from .worker_spec import REPEAT, WARMUP, ReferenceSpec, WorkerSpec

SCHEMA = "lsg-export-bench/1"
NEW_TOKENS = {"full": 32, "quick": 8}  # encoder-decoders: default new tokens of the timed greedy generation


@dataclass
class BenchResult:
    target: dict
    settings: dict
    environment: dict
    backends: dict  # name -> {"status": ok / failed, "error", "note", "load_seconds", "export"}
    cells: list = field(default_factory=list)  # Cell, in backend, length, batch order

    def cell(self, backend, length, batch):
        for cell in self.cells:
            if (cell.backend, cell.length, cell.batch) == (backend, length, batch):
                return cell
        return None

    def to_dict(self):
        from .report import summary
        return {"schema": SCHEMA, "target": self.target, "settings": self.settings, "environment": self.environment,
                "backends": self.backends, "results": [c.to_dict() for c in self.cells], "summary": summary(self)}


def check_device(device):
    if device not in ("cpu", "cuda"):
        raise LSGExportError(f"unknown --device {device!r}; accepted: cpu, cuda")
    if device == "cuda":
        import onnxruntime
        import torch
        if not torch.cuda.is_available() and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise LSGExportError("--device cuda: no CUDA GPU is usable here (torch.cuda.is_available() is False and "
                                 "ONNX Runtime has no CUDAExecutionProvider)")


def add_ratios(cells):
    """Speed-ups against torch-lsg and torch-chunked at the same length and batch (their p50 / this p50)."""
    reference = {(c.backend, c.length, c.batch): c.p50_ms for c in cells if c.status == "ok"}
    for cell in cells:
        if cell.status != "ok":
            continue
        for base, attribute in (("torch-lsg", "speedup_vs_torch_lsg"), ("torch-chunked", "speedup_vs_torch_chunked")):
            other = reference.get((base, cell.length, cell.batch))
            if other:
                setattr(cell, attribute, round(other / cell.p50_ms, 3))
    generation = {(c.length, c.batch): c.generate_p50_ms for c in cells
                  if c.backend == "torch-lsg" and c.generate_p50_ms}
    for cell in cells:
        other = generation.get((cell.length, cell.batch))
        if other and cell.generate_p50_ms:
            cell.generate_speedup_vs_torch_lsg = round(other / cell.generate_p50_ms, 3)


def check_new_tokens(new_tokens, target, quick):
    """The new tokens of the timed generation: encoder-decoders only (default 32, --quick 8)."""
    if not target.seq2seq:
        if new_tokens is not None:
            raise LSGExportError(f"--new-tokens is for encoder-decoders; {target.model} is an encoder "
                                 f"({target.task})")
        return None
    if new_tokens is None:
        return NEW_TOKENS["quick" if quick else "full"]
    if not isinstance(new_tokens, int) or new_tokens < 1:
        raise LSGExportError(f"--new-tokens must be a positive integer, got {new_tokens!r}")
    return new_tokens


def check_num_beams(num_beams, target):
    """Beams of the timed generation: encoder-decoders only (default 1: greedy)."""
    if not target.seq2seq:
        if num_beams is not None:
            raise LSGExportError(f"--num-beams is for encoder-decoders; {target.model} is an encoder ({target.task})")
        return None
    if num_beams is None:
        return 1
    if not isinstance(num_beams, int) or num_beams < 1:
        raise LSGExportError(f"--num-beams must be a positive integer, got {num_beams!r}")
    return num_beams


def check_rounds(rounds):
    """Rounds of the whole backend sequence: a positive integer (or its text, from the CLI)."""
    if isinstance(rounds, str) and rounds.strip().isdigit():
        rounds = int(rounds)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise LSGExportError(f"--rounds must be a positive integer, got {rounds!r}")
    return rounds


def quality_document(target, text):
    """(settings entry, onnx.validate.Document or None) of the quality columns' input: `text` (a file: bad input
    when it or the model's tokenizer is missing), else DEFAULT_TEXT where it is there and the model has a
    tokenizer, else random ids (None), the entry's note saying why."""
    from ..onnx.validate import text_ids
    entry = {"reference": "torch-lsg in float32 on CPU", "batch": 1, "text": None}
    if text is None and not DEFAULT_TEXT.is_file():
        return {**entry, "note": f"random ids: no document ({DEFAULT_TEXT} is absent; --text FILE names one)"}, None
    try:
        ids = text_ids(target.model, text or DEFAULT_TEXT)
    except LSGExportError as error:
        if text is not None:
            raise
        return {**entry, "note": f"random ids: {DEFAULT_TEXT} not used ({error})"}, None
    return {**entry, "text": str(text or DEFAULT_TEXT), "tokens": len(ids.pieces),
            "framed": {"prefix": list(ids.prefix), "suffix": list(ids.suffix)}}, ids


def compute_references(target, settings, ids, folder, status):
    """({length: .npy file}, {length: reason}): float32 PyTorch's outputs on the document (reference_main, in
    a process of its own) and the lengths without one."""
    lengths = settings["lengths"]
    spec = ReferenceSpec(str(target.model), target.task, settings["threads"], tuple(lengths), ids, folder)
    paths, missing = {}, {}

    def on_event(event):
        if event["event"] == "reference":
            (paths if "path" in event else missing)[event["length"]] = event.get("path") or event["reason"]
        elif event["event"] == "failed":
            missing.update({n: event["error"] for n in lengths if n not in paths})

    status("quality: float32 PyTorch on the document (the reference)")
    exit_code = run_in_process(spec, on_event)
    missing.update({n: f"its process ended with code {exit_code}" for n in lengths
                    if n not in paths and n not in missing})
    return paths, missing


def run_bench(target, *, seq=None, batch_size=None, backends=None, device="cpu", threads=None, warmup=WARMUP,
              repeat=REPEAT, quick=False, new_tokens=None, num_beams=None, rounds=1, text=None, status=None,
              progress=None):
    """Benchmark MODEL_OR_EXPORT `target`, a converted folder or an `lsg-export onnx` folder.

    seq / batch_size: lists or "512,1024". backends: names (default: those of the device; for an
    encoder-decoder, those that run one). new_tokens: encoder-decoders' generation length; num_beams:
    their beams (default 1: greedy). rounds: the whole sequence of backends runs that many times, in
    reverse order every other round (a steady drift of the machine's speed then weighs on all alike); each
    cell pools the timed runs of its rounds. text: the document of the quality columns (default: DEFAULT_TEXT
    where present): each backend's output on one row of it, at each length, against float32 PyTorch's.
    status(message): what is being done; progress(cell): after each cell of each round.
    Returns a BenchResult; bad arguments raise LSGExportError before any work."""
    from .report import environment
    status = status or (lambda message: None)
    progress = progress or (lambda cell: None)
    check_device(device)
    rounds = check_rounds(rounds)
    found = resolve_target(target)
    names = select_backends(backends, device, found.seq2seq)
    new_tokens = check_new_tokens(new_tokens, found, quick)
    num_beams = check_num_beams(num_beams, found)
    lengths = choose_lengths(seq, found, quick)
    batches = parse_ints(batch_size or "1", "--batch-size")
    threads = threads or os.cpu_count() or 1
    if threads < 1 or warmup < 0 or repeat < 1:
        raise LSGExportError("--threads and --repeat must be positive, --warmup at least 0")
    if quick:
        warmup, repeat = min(warmup, 1), min(repeat, 2)
    quality, ids = quality_document(found, text)
    settings = {"backends": names, "lengths": lengths, "batch_sizes": batches, "device": device, "threads": threads,
                "warmup": warmup, "repeat": repeat, "quick": quick, "rounds": rounds, "quality": quality}
    if found.seq2seq:  # encoder-decoders: encoder latency, and greedy generation of new_tokens tokens
        settings["new_tokens"], settings["num_beams"] = new_tokens, num_beams
        settings["skipped_backends"] = {} if backends else skipped_for_seq2seq(device)
    target_info = {"model": str(found.model), "export": str(found.export) if found.export else None,
                   "export_kind": found.export_kind, "task": found.task, "chosen": found.chosen,
                   "architecture": found.info.family.class_name(found.info.head),
                   "max_length": found.info.max_length, "lsg": found.info.lsg_options}
    if found.seq2seq:
        target_info["seq2seq"] = True
    started = time.time()
    result = BenchResult(target_info, settings, environment(device, threads), {})

    from .exports import prepare_exports
    exports = prepare_exports(names, found, device, status)
    runs = {name: [] for name in names}  # name -> [(record, cells)] per round
    with tempfile.TemporaryDirectory(prefix="lsg-bench-") as scratch:
        references, missing = compute_references(found, settings, ids, scratch, status)
        if missing:
            quality["missing"] = {str(n): reason for n, reason in missing.items()}
        for index in range(rounds):
            where = f"round {index + 1}/{rounds}: " if rounds > 1 else ""
            for name in names if index % 2 == 0 else names[::-1]:
                if index and not any(c.status == "ok" for c in runs[name][0][1]):
                    for cell in runs[name][0][1]:  # nothing measured in round 1, nothing to pool: not run again
                        progress(cell)
                    continue
                runs[name].append(run_backend(name, exports.get(name), found, settings,
                                              lambda message: status(where + message), progress,
                                              {"ids": ids, "references": references} if index == 0 else None))
    for name in names:
        record = runs[name][0][0]  # the first round's, failed if a later round failed
        failed = next((r for r, _ in runs[name] if r["status"] != "ok"), record)
        record.update({k: failed[k] for k in ("status", "error", "detail") if k in failed}, rounds=rounds)
        if rounds > 1:
            record["load_average_rounds"] = [r["load_average"] for r, _ in runs[name]]
        result.backends[name] = record
        result.cells.extend(pool(list(same)) for same in zip(*(cells for _, cells in runs[name])))
    add_ratios(result.cells)
    result.settings["seconds"] = round(time.time() - started, 1)
    result.environment["load_average_end"] = load_average()
    return result


def run_backend(name, export, target, settings, status, progress, quality=None):
    """Measure one backend: (its record, its cells in length, batch order); failures are recorded, not raised.
    quality: {"ids", "references"} for the quality columns (measured in the first batch size's process),
    or None.

    One process per batch size: an ONNX Runtime arena or torch cache grown by one batch size would count
    in the next one's memory. Within a process the lengths ascend, so what a shorter length left behind
    is less than what the next one needs."""
    lengths, batches = settings["lengths"], settings["batch_sizes"]
    record = {"status": "ok", "error": None, "note": None, "load_seconds": None,
              "description": BACKENDS[name].description, "export": None}
    cells = {(n, b): Cell(name, n, b, new_tokens=settings.get("new_tokens")) for n in lengths for b in batches}
    reported, cosines = set(), {}  # cosines: length -> the quality columns
    record["load_average"] = {"start": load_average()}  # 1/5/15-minute: other work competing for the CPUs
    if isinstance(export, LSGExportError):
        fail(record, cells, str(export))
        batches = []  # nothing to run
    elif unavailable(name) is not None:  # e.g. OpenVINO missing, or bf16 on a CPU without it: reported, not run
        record["status"], record["note"] = unavailable(name)  # the reason is the record's note, as a loader's
        for cell in cells.values():
            cell.status, cell.reason = record["status"], record["note"]
        batches = []
    record["export"] = str(export) if export and not isinstance(export, Exception) else None
    for batch in batches:
        status(f"running {name}")
        spec = WorkerSpec(name, str(target.model), target.task, device=settings["device"], threads=settings["threads"],
                          lengths=tuple(lengths), batches=(batch,), export=record["export"], warmup=settings["warmup"],
                          repeat=settings["repeat"], quick=settings["quick"], new_tokens=settings.get("new_tokens"),
                          num_beams=settings.get("num_beams"), quality=quality if batch == batches[0] else None)
        mine = {k: c for k, c in cells.items() if k[1] == batch}

        def on_event(event, mine=mine):
            kind = event.pop("event")
            if kind == "loaded":
                record.update(note=event["note"], load_seconds=event["seconds"], load_memory_mb=event["load_memory_mb"])
            elif kind == "cell":
                cell = Cell(**event)
                cells[(cell.length, cell.batch)] = mine[(cell.length, cell.batch)] = cell
                reported.add((cell.length, cell.batch))
                if progress:
                    progress(cell)
            elif kind == "quality":
                if "reason" in event:
                    record.setdefault("quality_notes", {})[str(event["length"])] = event["reason"]
                else:
                    cosines[event.pop("length")] = event
            elif kind == "failed":
                fail(record, mine, event["error"], oom=event["oom"], detail=event.get("detail"))

        exit_code = run_in_process(spec, on_event)
        if exit_code is not None and record["status"] == "ok":
            killed = exit_code < 0 and -exit_code == 9
            fail(record, mine, f"its process ended with code {exit_code}" + (" (killed: out of memory?)" if killed
                                                                            else ""), oom=killed)
        if record["status"] == "failed" and not any(c.runs for c in mine.values()):
            break  # it fails before measuring anything: the other batch sizes would fail alike
    record["load_average"]["end"] = load_average()
    for key, cell in cells.items():
        if cell.status == "ok" and not cell.runs:  # never measured (the process failed first)
            cell.status, cell.reason = "failed", record["error"] or "not measured"
        if cell.status == "ok" and cell.length in cosines:
            cell.pooled_cosine, cell.min_token_cosine = (cosines[cell.length][k] for k in ("pooled_cosine",
                                                                                          "min_token_cosine"))
        if progress and key not in reported:
            progress(cell)
    return record, [cells[(n, b)] for n in lengths for b in settings["batch_sizes"]]


def fail(record, cells, message, oom=False, detail=None):
    """Mark a backend failed and its unmeasured cells with the reason (progress is told too)."""
    record.update(status="failed", error=message)
    if detail:
        record["detail"] = detail
    for cell in cells.values():
        if not cell.runs and cell.status == "ok":
            cell.status, cell.reason = ("out of memory" if oom else "failed"), message


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
