"""ONNX Runtime vs the PyTorch model: per length and output, max / mean abs difference, arg-max agreement.

Each length runs a batch whose last row is padded (a third of it). Per-token outputs are compared on
the real tokens only: what a model computes at padding positions is undefined (nobody reads it), and
there the sums over fully masked windows differ by rounding more than elsewhere. Sequence-level
outputs (classification, multiple-choice) are compared whole."""
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import LSGExportError
from ..ops import explain_missing_ops
from .tasks import make_inputs

DEFAULT_ATOL = {"fp32": 1e-4, "fp16": 1e-2, "O3": 1e-3}  # O3: the tanh Gelu moves results ~1e-4..1e-3


@dataclass
class Comparison:
    length: int
    output: str
    max_abs_diff: float
    mean_abs_diff: float
    argmax_agreement: float = None  # logits only: fraction of rows / tokens whose arg-max agrees
    ok: bool = True


@dataclass
class ValidationReport:
    atol: float
    enforced: bool  # False for int8: the differences are reported, never a failure
    batch_size: int
    lengths: list
    inputs: str  # "random ids" or the text file
    rows: list = field(default_factory=list)

    @property
    def failed_lengths(self):
        return sorted({row.length for row in self.rows if not row.ok})

    @property
    def passed(self):
        return not self.enforced or not self.failed_lengths

    def worst(self):
        return max(self.rows, key=lambda row: row.max_abs_diff) if self.rows else None

    def failure_message(self):
        bad = [row for row in self.rows if not row.ok]
        if not bad:
            return None
        row = max(bad, key=lambda r: r.max_abs_diff)
        return (f"ONNX Runtime and PyTorch differ above --atol {self.atol:g} at length "
                f"{', '.join(map(str, self.failed_lengths))} (worst: {row.output} at length {row.length}, "
                f"max abs diff {row.max_abs_diff:.3g})")

    def to_dict(self):
        return {"passed": self.passed, "atol": self.atol, "enforced": self.enforced, "batch_size": self.batch_size,
                "lengths": self.lengths, "inputs": self.inputs, "failed_lengths": self.failed_lengths,
                "max_abs_diff": max((r.max_abs_diff for r in self.rows), default=0.0),
                "rows": [asdict(row) for row in self.rows]}


def default_lengths(block_size, seq):
    """1, both sides of the block and 2-block boundaries, a non-multiple of the block, ~seq/2, seq."""
    b = block_size
    candidates = [1, b - 1, b, b + 1, 2 * b - 1, 2 * b, 2 * b + 1, 3 * b + max(1, b // 3), seq // 2, seq]
    return sorted({n for n in candidates if 1 <= n <= seq})


def parse_lengths(text, seq):
    """"1,500,4096" or a list -> sorted distinct lengths, each in 1..seq."""
    parts = text if isinstance(text, (list, tuple)) else str(text).replace(" ", "").split(",")
    try:
        lengths = sorted({int(part) for part in parts if part != ""})
    except ValueError:
        raise LSGExportError(f"--lengths must be comma-separated integers, got {text!r}") from None
    if not lengths:
        raise LSGExportError("--lengths is empty")
    bad = [n for n in lengths if not 1 <= n <= seq]
    if bad:
        raise LSGExportError(f"--lengths {', '.join(map(str, bad))} outside 1..{seq} (the graph's --seq)")
    return lengths


def text_ids(tokenizer_folder, text_file):
    """The token ids of a document (no special tokens), for --text."""
    from transformers import AutoTokenizer

    from ..convert import quiet_transformers
    try:
        text = open(text_file, encoding="utf-8", errors="replace").read()
    except OSError as error:
        raise LSGExportError(f"--text {text_file}: {error.strerror or error}") from None
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    except (OSError, ValueError, TypeError):
        raise LSGExportError(f"--text needs a tokenizer and {tokenizer_folder} has none") from None
    with quiet_transformers():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise LSGExportError(f"--text {text_file}: no tokens")
    return torch.tensor(ids, dtype=torch.long)


def text_chunks(ids, batch, length):
    """(batch, length) chunks of the document, row r starting r * length tokens in (wrapping round)."""
    need = batch * length
    repeated = ids.repeat(need // ids.numel() + 1)
    return repeated[:need].reshape(batch, length)


def make_session(path, device, backend=None, options=None):
    """An ONNX Runtime session on `device`, set up as the attention backend needs (options: the caller's
    SessionOptions, e.g. a thread count)."""
    import onnxruntime as ort
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    if backend is not None:
        providers = [p for p in providers if p in backend.providers]
    # TF32 (on by default in the CUDA provider) rounds float32 MatMuls to 10 mantissa bits: a comparison
    # with float32 PyTorch at 1e-4 needs full float32
    providers = [(p, {"use_tf32": "0"}) if p == "CUDAExecutionProvider" else p for p in providers]
    if backend is not None and backend.setup_session is not None:
        backend.setup_session(options)
    try:
        with explain_missing_ops():  # a graph with the custom op, opened without its library: how to build it
            return ort.InferenceSession(str(path), options, providers=providers)
    except LSGExportError:
        raise
    except Exception as error:
        raise LSGExportError(f"ONNX Runtime cannot load {path} ({str(error).splitlines()[0][:300]})") from None


def _argmax_agreement(reference, got, name, token_mask):
    """Logits: the fraction of predictions that agree. A class dim after the tokens: arg-max per real
    token; per-token scores (question-answering): arg-max over the real tokens of each row."""
    if name == "last_hidden_state":
        return None
    if reference.shape == token_mask.shape:
        reference = np.where(token_mask, reference, -np.inf)
        got = np.where(token_mask, got, -np.inf)
    same = reference.argmax(-1) == got.argmax(-1)
    if same.shape == token_mask.shape:
        same = same[token_mask]
    return float(same.mean()) if same.size else 1.0


def compare(session, module, info, task, output_names, lengths, batch_size, atol, enforced, ids=None,
            inputs_label="random ids", progress=None):
    """Run both on each length (batch_size rows, the last padded) and fill a ValidationReport."""
    report = ValidationReport(atol, enforced, batch_size, list(lengths), inputs_label)
    feeds = [i.name for i in session.get_inputs()]
    generator = torch.Generator().manual_seed(0)
    for length in lengths:
        if progress:
            progress(length)
        chunk = text_chunks(ids, batch_size, length) if ids is not None else None
        inputs = make_inputs(info, task, batch_size, length, generator=generator, ids=chunk)
        with torch.no_grad():
            expected = [t.float().numpy() for t in module(*inputs.values())]
        try:
            got = session.run(output_names, {name: inputs[name].numpy() for name in feeds})
        except Exception as error:
            raise LSGExportError(f"ONNX Runtime failed at length {length} ({str(error).splitlines()[0][:300]})") \
                from None
        token_mask = inputs["attention_mask"].bool().numpy()
        for name, reference, value in zip(output_names, expected, got):
            if value.shape != reference.shape:
                report.rows.append(Comparison(length, name, float("inf"), float("inf"), 0.0, False))
                continue
            agreement = _argmax_agreement(reference, value, name, token_mask)
            if reference.shape[:token_mask.ndim] == token_mask.shape:  # per-token output: real tokens only
                reference, value = reference[token_mask], value[token_mask]
            diff = np.abs(value.astype(np.float64) - reference.astype(np.float64))
            max_diff = float(diff.max()) if diff.size else 0.0
            if not np.isfinite(max_diff):
                max_diff = float("inf")
            report.rows.append(Comparison(
                length, name, max_diff, float(diff.mean()) if diff.size else 0.0,
                agreement, max_diff <= atol or not enforced))
    return report


def render_table(report, title="ONNX Runtime vs PyTorch"):
    """A rich Table of the report (one row per length and output)."""
    from rich.table import Table
    table = Table(title=f"{title} (batch {report.batch_size}, last row padded, {report.inputs}, real tokens; "
                        f"atol {report.atol:g}{'' if report.enforced else ', reported only'})")
    for column in ("length", "output", "max |diff|", "mean |diff|", "arg-max", ""):
        table.add_column(column, justify="left" if column in ("output", "") else "right", no_wrap=True)
    for row in report.rows:
        status = "[green]ok[/green]" if row.ok and report.enforced else \
            ("[red]FAIL[/red]" if not row.ok else "[yellow]report[/yellow]")
        agreement = "-" if row.argmax_agreement is None else f"{100 * row.argmax_agreement:.2f}%"
        table.add_row(str(row.length), row.output, f"{row.max_abs_diff:.2e}", f"{row.mean_abs_diff:.2e}",
                      agreement, status)
    return table


__all__ = ["Comparison", "ValidationReport", "DEFAULT_ATOL", "compare", "default_lengths", "parse_lengths",
           "render_table", "text_ids", "make_session"]
