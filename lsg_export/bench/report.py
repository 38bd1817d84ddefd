"""What a run reports: the environment, a summary (best backends, growth with length), a rich table,
JSON and CSV with every measurement."""
import csv
import datetime
import io
import json
import math
import os
import platform
import sys
from pathlib import Path

LSG_BACKENDS = ("torch-lsg", "ort-gather", "ort-gather-optimized", "ort-int8", "ort-fp16", "ort-custom-op",
                "ort-int8-custom-op", "ort-int8-per-tensor", "ort-int8-per-tensor-custom-op", "ov-f32", "ov-bf16")
STATUS_STYLE = {"ok": "green", "skipped": "yellow", "not applicable": "yellow", "out of memory": "red",
                "failed": "red"}


# --- environment ----------------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name():
    try:
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None


def memory_total_gb():
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def environment(device, threads):
    import importlib.metadata as metadata

    from ..onnx.record import versions
    found = versions()
    for name in ("numpy", "matplotlib", "nvidia-ml-py"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu_model(),
            "cpu_count": cores, "threads": threads, "device": device, "gpu": gpu_name(),
            "memory_gb": memory_total_gb(), "platform": platform.platform(), "python": sys.version.split()[0],
            "versions": found, "load_average_start": load}


# --- summary ---------------------------------------------------------------------------------------

def exponent(points):
    """Least-squares slope of log(value) against log(length): 1 linear, 2 quadratic (None below 2 points)."""
    points = [(n, v) for n, v in points if v and v > 0]
    if len(points) < 2:
        return None
    xs, ys = [math.log(n) for n, _ in points], [math.log(v) for _, v in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den, 3) if den else None


def summary(result):
    """Per batch size: the fastest backend at the longest length run, per length the best ONNX Runtime
    backend against torch-lsg and the best LSG backend against torch-chunked, and per backend how time
    and memory grow with the length (log-log slope and the ratio longest / previous lengths)."""
    out = {}
    for batch in result.settings["batch_sizes"]:
        ok = [c for c in result.cells if c.batch == batch and c.status == "ok"]
        per_length = {}
        for length in result.settings["lengths"]:
            here = {c.backend: c for c in ok if c.length == length}
            entry = {}
            ort = [c for name, c in here.items() if name.startswith("ort-")]
            if ort and "torch-lsg" in here:
                best = min(ort, key=lambda c: c.p50_ms)
                entry["best_ort_vs_torch_lsg"] = {"backend": best.backend, "speedup": best.speedup_vs_torch_lsg}
            lsg = [c for name, c in here.items() if name in LSG_BACKENDS]
            if lsg and "torch-chunked" in here:
                best = min(lsg, key=lambda c: c.p50_ms)
                ratio = round(best.p50_ms / here["torch-chunked"].p50_ms, 3)
                entry["best_lsg_vs_torch_chunked"] = {"backend": best.backend, "time_ratio": ratio}
            if here:
                entry["fastest"] = min(here.values(), key=lambda c: c.p50_ms).backend
            generating = [c for c in here.values() if c.generate_p50_ms]
            if generating:  # encoder-decoders: generation too
                entry["fastest_generate"] = min(generating, key=lambda c: c.generate_p50_ms).backend
                ort = [c for c in generating if c.backend.startswith("ort-")]
                if ort and "torch-lsg" in here:
                    best = min(ort, key=lambda c: c.generate_p50_ms)
                    entry["best_ort_generate_vs_torch_lsg"] = {"backend": best.backend,
                                                               "speedup": best.generate_speedup_vs_torch_lsg}
            per_length[str(length)] = entry
        growth = {}
        for name in result.settings["backends"]:
            cells = sorted((c for c in ok if c.backend == name), key=lambda c: c.length)
            if not cells:
                continue
            longest = cells[-1]
            growth[name] = {
                "time_exponent": exponent([(c.length, c.p50_ms) for c in cells]),
                "memory_exponent": exponent([(c.length, c.peak_memory_mb) for c in cells]),
                "time_ratio_to_longest": {str(c.length): round(longest.p50_ms / c.p50_ms, 3) for c in cells[:-1]},
                "memory_ratio_to_longest": {str(c.length): round(longest.peak_memory_mb / c.peak_memory_mb, 3)
                                            for c in cells[:-1] if c.peak_memory_mb and longest.peak_memory_mb},
                "longest_length": longest.length}
        out[str(batch)] = {"per_length": per_length, "growth": growth}
    return out


# --- outputs ---------------------------------------------------------------------------------------

def _fmt(value, digits=1, suffix=""):
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


QUALITY_COLUMN = "cosine"  # mean-pooled / lowest token: the caption says
COLUMNS = ("backend", "length", "batch", "p50 ms", "p90 ms", "p99 ms", "tokens/s", "peak MB", "x torch-lsg",
           "x chunked", QUALITY_COLUMN, "status")
SEQ2SEQ_COLUMNS = ("backend", "length", "batch", "enc p50 ms", "peak MB", "enc x torch-lsg", "gen p50 ms",
                   "gen tokens/s", "decode tok/s", "gen x torch-lsg", QUALITY_COLUMN, "status")


def quality_text(cell):
    """The quality column: mean-pooled cosine / lowest per-token cosine to float32 PyTorch."""
    if cell.pooled_cosine is None:
        return "-"
    return f"{cell.pooled_cosine:.5f}" + ("" if cell.min_token_cosine is None else f"/{cell.min_token_cosine:.4f}")


def quality_caption(quality):
    """What the quality column compares, for the table's caption."""
    if not quality:
        return ""
    framed = " framed by the tokenizer's special tokens" if (quality.get("framed") or {}).get("prefix") else ""
    what = (f"{Path(quality['text']).name}'s first tokens ({quality['tokens']} in all){framed}" if quality.get("text")
            else quality.get("note", "random ids"))
    return f"; cosine: the output's to float32 PyTorch's on {what}, batch 1, mean-pooled / lowest token"


def row_values(cell, seq2seq):
    """The table's cells of one row, after backend, length and batch and before status."""
    if seq2seq:
        return (_fmt(cell.p50_ms), _fmt(cell.peak_memory_mb, 0), _fmt(cell.speedup_vs_torch_lsg, 2, "x"),
                _fmt(cell.generate_p50_ms), _fmt(cell.generate_tokens_per_s, 1), _fmt(cell.decode_tokens_per_s, 1),
                _fmt(cell.generate_speedup_vs_torch_lsg, 2, "x"), quality_text(cell))
    return (_fmt(cell.p50_ms), _fmt(cell.p90_ms), _fmt(cell.p99_ms), _fmt(cell.tokens_per_s, 0),
            _fmt(cell.peak_memory_mb, 0), _fmt(cell.speedup_vs_torch_lsg, 2, "x"),
            _fmt(cell.speedup_vs_torch_chunked, 2, "x"), quality_text(cell))


def render_table(result):
    """A rich Table: one row per backend, length and batch (encoder-decoders: the encoder, then generation)."""
    from rich.markup import escape
    from rich.table import Table
    env, settings = result.environment, result.settings
    seq2seq = result.target.get("seq2seq", False)
    how = "greedy" if settings.get("num_beams", 1) == 1 else f"{settings['num_beams']}-beam"
    what = (f"; enc: the encoder; gen: {how} generation of {settings['new_tokens']} new tokens, encoder included; "
            f"decode: its tokens/s after the encoder") if seq2seq else ""
    rounds = settings.get("rounds", 1)
    table = Table(title=f"lsg-export bench: {result.target['architecture']} ({result.target['task']}), "
                        f"{settings['device']}, {settings['threads']} threads"
                        + (f", {rounds} rounds pooled" if rounds > 1 else ""),
                  caption=f"{env['date'][:16]}, {env['cpu']}{', ' + env['gpu'] if env['gpu'] else ''}; "
                          f"x: speed-up (their p50 / this p50){what}{quality_caption(settings.get('quality'))}")
    for column in SEQ2SEQ_COLUMNS if seq2seq else COLUMNS:
        table.add_column(column, justify="left" if column in ("backend", "status") else "right",
                         no_wrap=column != "status")
    previous = None
    for cell in result.cells:
        style = STATUS_STYLE[cell.status]
        status = escape(cell.status if cell.status == "ok" else f"{cell.status}: {cell.reason}")  # e.g. "[openvino]"
        table.add_row(cell.backend if cell.backend != previous else "", str(cell.length), str(cell.batch),
                      *row_values(cell, seq2seq), f"[{style}]{status}[/{style}]", end_section=False)
        previous = cell.backend
    return table


def write_text(path, text):
    """`path` ('-': stdout) written whole or not at all."""
    if str(path) == "-":
        sys.stdout.write(text)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(result, path):
    write_text(path, json.dumps(result.to_dict(), indent=1) + "\n")


CSV_ENVIRONMENT = ("date", "cpu", "gpu", "threads", "device")


def write_csv(result, path):
    """One row per (backend, length, batch), the environment repeated on each row; times space-separated
    (encoder-decoders: the generation columns and generate_times_ms too)."""
    from .measure import SEQ2SEQ_FIELDS, Cell
    seq2seq = result.target.get("seq2seq", False)
    lists = ("times_ms", "generate_times_ms") if seq2seq else ("times_ms",)
    fields = [f for f in Cell.__dataclass_fields__ if f not in lists and (seq2seq or f not in SEQ2SEQ_FIELDS)]
    versions = result.environment["versions"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*fields, *lists, *CSV_ENVIRONMENT, "torch", "onnxruntime", "task", "model"])
    for cell in result.cells:
        writer.writerow([*("" if getattr(cell, f) is None else getattr(cell, f) for f in fields),
                         *(" ".join(map(str, getattr(cell, name) or [])) for name in lists),
                         *(result.environment.get(k) or "" for k in CSV_ENVIRONMENT), versions.get("torch", ""),
                         versions.get("onnxruntime", versions.get("onnxruntime-gpu", "")), result.target["task"],
                         result.target["model"]])
    write_text(path, buffer.getvalue())
