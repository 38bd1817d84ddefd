"""The measurement: a timing loop with percentiles and peak memory, run in one process per backend.

Each backend runs in its own process (forked from a server that imported torch / transformers /
onnxruntime once), so that one backend's allocations, caches and thread pools never show in another's
figures, and an out-of-memory kill ends only that backend. The process sends its results over a pipe.

Within a process the lengths are warmed up one after another (ascending), then timed in turns, one
run of each length and again: the machine's speed drifts by tens of percent over tens of seconds on
small VMs, and a length timed half a minute after another one took that drift into their ratio.

Quality: after its timed runs, the process runs one row of a real document at each length measured and
compares the first output with float32 PyTorch's (computed once per run by reference_main, in a process
of its own, and saved to .npy files): mean-pooled cosine and lowest per-token cosine.

Memory is the increase over the process's state once the model is loaded, over a (length, batch)'s
warm-up runs: on CPU the peak resident set (VmHWM, reset before each (length, batch) on Linux), on CUDA
torch's max allocated bytes, and for ONNX Runtime on CUDA the process's GPU memory from NVML (its arena
only grows).
"""
import multiprocessing
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace

from ..errors import first_line
from .failures import is_oom, plain_line
from .worker_spec import ReferenceSpec, WorkerSpec

MIN_RUNS = 3  # timed runs kept even when one run is long
LIMITS = {  # (seconds of timed runs per (length, batch), predicted seconds of one run above which it is skipped)
    "full": (120.0, 150.0),
    "quick": (5.0, 20.0),
}
SEQ2SEQ_FIELDS = ("new_tokens", "generate_runs", "generate_p50_ms", "generate_p90_ms", "generate_min_ms",
                  "generate_tokens_per_s", "decode_p50_ms", "decode_tokens_per_s", "generate_peak_memory_mb",
                  "generate_speedup_vs_torch_lsg", "generate_times_ms")


@dataclass
class Cell:
    """One (backend, length, batch) measurement."""
    backend: str
    length: int
    batch: int
    status: str = "ok"  # ok, skipped, out of memory, failed
    reason: str = None
    warmup: int = 0
    runs: int = 0
    p50_ms: float = None
    p90_ms: float = None
    p99_ms: float = None
    mean_ms: float = None
    min_ms: float = None
    tokens_per_s: float = None
    peak_memory_mb: float = None
    memory_kind: str = None
    speedup_vs_torch_lsg: float = None  # torch-lsg p50 / this p50
    speedup_vs_torch_chunked: float = None  # torch-chunked p50 / this p50 (< 1: slower than the floor)
    # the first output on one row of the document against float32 PyTorch's (validate.cosines); the same
    # figures on every batch size's cell of the length
    pooled_cosine: float = None
    min_token_cosine: float = None
    times_ms: list = field(default_factory=list)
    # encoder-decoders only (new_tokens set; absent from encoders' rows): the times above are the encoder's,
    # these greedy generation of new_tokens tokens from the same input (encoder included), same timing loop
    new_tokens: int = None
    generate_runs: int = None
    generate_p50_ms: float = None
    generate_p90_ms: float = None
    generate_min_ms: float = None
    generate_tokens_per_s: float = None  # batch x new_tokens / generate p50
    decode_p50_ms: float = None  # median over the runs of each run's time after its encoder: the decoder steps
    decode_tokens_per_s: float = None  # batch x new_tokens / decode p50: the decoder's pace
    generate_peak_memory_mb: float = None
    generate_speedup_vs_torch_lsg: float = None  # torch-lsg generate p50 / this generate p50
    generate_times_ms: list = None

    def to_dict(self):
        data = asdict(self)
        if self.new_tokens is None:
            for name in SEQ2SEQ_FIELDS:
                del data[name]
        return data


def summarize(cell, times):
    import numpy as np
    ms = np.asarray(times) * 1000.0
    cell.times_ms = [round(float(t), 4) for t in ms]
    cell.runs = len(times)
    cell.p50_ms, cell.p90_ms, cell.p99_ms = (round(float(v), 4) for v in np.percentile(ms, [50, 90, 99]))
    cell.mean_ms, cell.min_ms = round(float(ms.mean()), 4), round(float(ms.min()), 4)
    cell.tokens_per_s = round(cell.batch * cell.length / (cell.p50_ms / 1000.0), 1)
    return cell


def summarize_generation(cell, times, decode_times, new_tokens):
    """Generation figures of `cell` from the timed runs' wall times and their decoding parts (seconds)."""
    import numpy as np
    ms = np.asarray(times) * 1000.0
    cell.new_tokens, cell.generate_runs = new_tokens, len(times)
    cell.generate_times_ms = [round(float(t), 4) for t in ms]
    cell.generate_p50_ms, cell.generate_p90_ms = (round(float(v), 4) for v in np.percentile(ms, [50, 90]))
    cell.generate_min_ms = round(float(ms.min()), 4)
    cell.decode_p50_ms = round(float(np.median(decode_times)) * 1000.0, 4)
    tokens = cell.batch * new_tokens
    cell.generate_tokens_per_s = round(tokens / (cell.generate_p50_ms / 1000.0), 2)
    cell.decode_tokens_per_s = round(tokens / (cell.decode_p50_ms / 1000.0), 2)
    return cell


def pool(rounds):
    """One cell from the same (backend, length, batch) measured in each round (--rounds): the timed runs of
    all rounds pooled and the statistics recomputed over them. A cell not ok in some round keeps that
    round's status and reason, unpooled (failures first: a skip may only reflect a slower round)."""
    bad = [c for c in rounds if c.status != "ok"]
    if len(rounds) == 1:
        return rounds[0]
    if bad:
        return next((c for c in bad if c.status != "skipped"), bad[0])
    cell = replace(rounds[0], warmup=sum(c.warmup for c in rounds),
                   peak_memory_mb=max((c.peak_memory_mb for c in rounds if c.peak_memory_mb is not None), default=None))
    summarize(cell, [t / 1000.0 for c in rounds for t in c.times_ms])
    if cell.generate_times_ms is not None:
        # the runs' decoding parts are not kept in a cell: decode p50 is the median of the rounds' decode p50
        summarize_generation(cell, [t / 1000.0 for c in rounds for t in c.generate_times_ms],
                             [c.decode_p50_ms / 1000.0 for c in rounds], cell.new_tokens)
        cell.generate_peak_memory_mb = max((c.generate_peak_memory_mb for c in rounds
                                            if c.generate_peak_memory_mb is not None), default=None)
    return cell


def timed_once(call, sync):
    start = time.perf_counter()
    call()
    sync()
    return time.perf_counter() - start


def warm_up(call, sync, warmup, cell_seconds):
    """Untimed runs: at least one, fewer than `warmup` when they would fill half the cell's time. Returns their
    count and the fastest one's seconds (what the timed runs are planned on)."""
    first = timed_once(call, sync)
    times = [first]
    while len(times) < warmup and first * (len(times) + 1) <= cell_seconds / 2:
        times.append(timed_once(call, sync))
    return len(times), min(times)


def planned_runs(seconds, repeat, cell_seconds):
    """Timed runs of a cell whose run takes `seconds`: `repeat`, cut to the cell's time (at least MIN_RUNS)."""
    return max(min(repeat, MIN_RUNS), min(repeat, int(cell_seconds / max(seconds, 1e-9))))


def time_runs(call, sync, warmup, repeat, cell_seconds):
    """Warm-up then timed runs; long runs cut the counts (at least one warm-up, MIN_RUNS timed)."""
    warm, seconds = warm_up(call, sync, warmup, cell_seconds)
    return [timed_once(call, sync) for _ in range(planned_runs(seconds, repeat, cell_seconds))], warm


def time_interleaved(plans, sync):
    """Timed runs of several cells in turns (one run of each, then again): a drift of the machine's speed
    during the measurement then weighs on every cell alike, and their ratios (e.g. time at 16384 / time
    at 4096 tokens) hold. plans: [(call, runs)]; returns per plan its seconds and its error (None, or the
    exception that ended its runs)."""
    times, errors = [[] for _ in plans], [None] * len(plans)
    for turn in range(max((runs for _, runs in plans), default=0)):
        for index, (call, runs) in enumerate(plans):
            if turn < runs and errors[index] is None:
                try:
                    times[index].append(timed_once(call, sync))
                except Exception as error:  # this cell fails, the others go on
                    errors[index] = error
    return list(zip(times, errors))


# --- memory ------------------------------------------------------------------------------------

def _status_kb(field_name):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


class PeakMemory:
    """Peak memory of this process above its state after loading (MB), as the device and engine allow."""

    def __init__(self, device, engine):
        self.device, self.engine = device, engine
        self.nvml = None
        if device == "cuda" and engine == "torch":
            self.kind = "cuda max allocated"
        elif device == "cuda":
            self.kind = self._open_nvml()
        else:
            self.kind = "RSS increase"
        self.baseline = self._now()

    def _open_nvml(self):
        try:
            import pynvml
            pynvml.nvmlInit()
            self.nvml = pynvml
            return "cuda process memory (NVML: ONNX Runtime arena)"
        except Exception:
            return None  # nvidia-ml-py missing: no figure rather than a wrong one

    def _now(self):
        if self.kind == "cuda max allocated":
            import torch
            return torch.cuda.memory_allocated()
        if self.nvml is not None:
            handle = self.nvml.nvmlDeviceGetHandleByIndex(0)
            used = [p.usedGpuMemory or 0 for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                    if p.pid == os.getpid()]
            return sum(used)
        if self.kind is None:
            return 0
        if sys.platform.startswith("linux"):
            return _status_kb("VmRSS") * 1024
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

    def reset(self):
        if self.kind == "cuda max allocated":
            import torch
            torch.cuda.reset_peak_memory_stats()
        elif self.kind == "RSS increase" and sys.platform.startswith("linux"):
            try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0); without it the peak is monotonic
                with open("/proc/self/clear_refs", "w") as refs:
                    refs.write("5")
            except OSError:
                pass

    def peak_mb(self):
        if self.kind is None:
            return None
        if self.kind == "cuda max allocated":
            import torch
            peak = torch.cuda.max_memory_allocated()
        elif self.nvml is not None:
            peak = self._now()
        elif sys.platform.startswith("linux"):
            peak = _status_kb("VmHWM") * 1024
        else:
            peak = self._now()
        return round(max(0, peak - self.baseline) / 2**20, 1)


# --- one backend, in its own process -------------------------------------------------------------

def predicted_seconds(history, length):
    """One run's time at `length` from the earlier lengths of this batch (growth at least linear)."""
    if not history:
        return 0.0
    (n1, t1) = history[-1]
    exponent = 2.0
    if len(history) > 1:
        import math
        (n0, t0) = history[-2]
        exponent = max(1.0, math.log(t1 / t0) / math.log(n1 / n0)) if t0 > 0 and n1 > n0 else 2.0
    return t1 * (length / n1) ** exponent


def measure_backend(spec, send):
    """Load spec.backend (a WorkerSpec) and measure every (length, batch); `send` gets one dict per event."""
    import torch

    from transformers.utils import logging

    from .backends import BACKENDS
    logging.set_verbosity_error()  # e.g. Longformer's line about padding to its window, at every new length
    torch.set_num_threads(spec.threads)
    backend = BACKENDS[spec.backend]
    start = time.perf_counter()
    memory_before = PeakMemory("cpu", "torch")
    runner = backend.load(spec)
    memory = PeakMemory(spec.device, backend.engine)
    send({"event": "loaded", "seconds": round(time.perf_counter() - start, 2), "note": runner.note,
          "load_memory_mb": round((memory.baseline - memory_before.baseline) / 2**20, 1)
          if memory.kind == "RSS increase" else None})
    cell_seconds, run_limit = LIMITS["quick" if spec.quick else "full"]
    measured = [measure_batch(spec, runner, memory, batch, cell_seconds, run_limit, send) for batch in spec.batches]
    if spec.quality:  # after the timed runs: a run at the longest length would grow the memory cells measure
        measure_quality(spec.quality, runner, measured[0], send)


def document_row(document, length):
    """(1, length) ids of the document's start, framed by its tokenizer's special tokens (validate.Document), or
    None (random ids) without one."""
    return None if document is None else document.rows(1, length)


def cosine_columns(reference, got):
    """The quality columns of an output against float32 PyTorch's (every row and token is real)."""
    import numpy as np

    from ..onnx.validate import cosines
    if got.shape != reference.shape:
        raise ValueError(f"its output {tuple(got.shape)} is not shaped as PyTorch's {tuple(reference.shape)}")
    pooled, token = cosines(reference, got, np.ones(reference.shape[:2], dtype=bool) if reference.ndim > 2 else None)
    return {"pooled_cosine": round(pooled, 6), "min_token_cosine": None if token is None else round(token, 6)}


def measure_quality(quality, runner, lengths, send):
    """One 'quality' event per length measured that has a reference (quality['references']: length -> .npy):
    its cosine columns, or the reason there are none."""
    import numpy as np
    for length in lengths:
        if length not in quality["references"]:
            continue
        event = {"event": "quality", "length": length}
        try:
            event.update(cosine_columns(np.load(quality["references"][length]),
                                        runner.output(length, document_row(quality["ids"], length))))
        except Exception as error:  # this length has no quality figures, the others go on
            event["reason"] = plain_line(error)
        send(event)


def reference_main(spec, send):
    """The float32 PyTorch reference: torch-lsg on CPU, its first output on one row of the document at each of
    spec.lengths (a ReferenceSpec), saved as spec.folder/<length>.npy; one 'reference' event per length (path or
    reason)."""
    import numpy as np
    import torch

    from .backends import BACKENDS
    torch.set_num_threads(spec.threads)
    runner = BACKENDS["torch-lsg"].load(WorkerSpec("torch-lsg", spec.model, spec.task, device="cpu",
                                                   threads=spec.threads, lengths=spec.lengths))
    for length in spec.lengths:
        event = {"event": "reference", "length": length}
        try:
            path = os.path.join(spec.folder, f"{length}.npy")
            np.save(path, runner.output(length, document_row(spec.ids, length)))
            event["path"] = path
        except Exception as error:
            event["reason"] = plain_line(error)
        send(event)


def measure_batch(spec, runner, memory, batch, cell_seconds, run_limit, send):
    """Every length of one batch size: warm-up and peak memory length by length (ascending, so that what a
    shorter length left behind is less than what the next one needs), then the timed runs of all lengths in
    turns (time_interleaved), then, for encoder-decoders, generation length by length. Returns the lengths
    measured."""
    history, ready, measured = [], [], []  # history: (length, seconds of one run); ready: (cell, call, runs)
    for length in spec.lengths:
        cell = Cell(spec.backend, length, batch, memory_kind=memory.kind, new_tokens=spec.new_tokens)
        predicted = predicted_seconds(history, length)
        reason = runner.limit(batch, length)
        if reason is None and predicted > run_limit:
            reason = f"one run would take ~{predicted:.0f} s (limit {run_limit:.0f} s)"
        if reason:
            cell.status, cell.reason = "skipped", reason
            send({"event": "cell", **cell.to_dict()})
            continue
        try:
            call = runner.prepare(batch, length)
            memory.reset()
            cell.warmup, seconds = warm_up(call, runner.sync, spec.warmup, cell_seconds)
            cell.peak_memory_mb = memory.peak_mb()
            history.append((length, seconds))
            ready.append((cell, call, planned_runs(seconds, spec.repeat, cell_seconds)))
        except Exception as error:  # reported in the table, the other lengths go on
            failed(cell, error, spec, send)
    timed = time_interleaved([(call, runs) for _, call, runs in ready], runner.sync)
    for (cell, _, _), (times, error) in zip(ready, timed):
        if error is not None:
            failed(cell, error, spec, send)
            continue
        summarize(cell, times)
        try:
            if runner.generate is not None:  # encoder-decoders: then greedy generation from the same input
                call = runner.generate(batch, cell.length, spec.new_tokens, spec.num_beams or 1)
                memory.reset()
                times, _ = time_runs(call, runner.sync, spec.warmup, spec.repeat, cell_seconds)
                summarize_generation(cell, times, call.decode_seconds[-len(times):], spec.new_tokens)
                cell.generate_peak_memory_mb = memory.peak_mb()
        except Exception as error:
            failed(cell, error, spec, send)
            continue
        finally:
            call = None
        send({"event": "cell", **cell.to_dict()})
        measured.append(cell.length)
    return measured


def failed(cell, error, spec, send):
    """Report `cell` as out of memory or failed with `error`'s first line."""
    import torch
    cell.status = "out of memory" if is_oom(error) else "failed"
    cell.reason = first_line(error)
    if spec.device == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    send({"event": "cell", **cell.to_dict()})


def worker_main(spec, connection):
    """Process entry point (a ReferenceSpec: reference_main, a WorkerSpec: measure_backend): events go to
    `connection`; an error while loading is one 'failed' event."""
    try:
        (reference_main if isinstance(spec, ReferenceSpec) else measure_backend)(spec, connection.send)
    except BaseException as error:  # noqa: B902 - whatever it is, the parent must hear of it
        from ..errors import LSGExportError
        detail = None if isinstance(error, LSGExportError) else traceback.format_exc(limit=-3)
        connection.send({"event": "failed", "error": plain_line(error), "oom": is_oom(error), "detail": detail})
    finally:
        connection.send({"event": "done"})
        connection.close()


PRELOAD = ["torch", "transformers", "onnxruntime", "numpy", "lsg_export.bench.backends", "lsg_export.onnx.pipeline",
           "lsg_export.modeling.modeling_lsg_bert"]


def process_context():
    """Workers fork from a server that imported the heavy modules once (spawn where forking is unavailable)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def run_in_process(spec, on_event):
    """Run one backend in its own process; returns its exit code (None when it ended normally)."""
    context = process_context()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=worker_main, args=(spec, send), daemon=True)
    process.start()
    send.close()
    done = False
    try:
        while not done:
            if receive.poll(0.2):
                try:
                    event = receive.recv()
                except EOFError:
                    break
                done = event["event"] == "done"
                if not done:
                    on_event(event)
            elif not process.is_alive():
                while receive.poll():  # what it sent before dying
                    try:
                        event = receive.recv()
                    except EOFError:
                        break
                    done = done or event["event"] == "done"
                    if event["event"] != "done":
                        on_event(event)
                break
    finally:
        process.join(timeout=30 if done else 5)
        if process.is_alive():
            process.kill()
            process.join()
    return None if done else process.exitcode
