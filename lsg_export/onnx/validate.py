"""ONNX Runtime vs the PyTorch model: per length and output, max / mean abs difference, arg-max agreement.

Each length runs a batch whose last row is padded (a third of it). Per-token outputs are compared on
the real tokens only: what a model computes at padding positions is undefined (nobody reads it), and
there the sums over fully masked windows differ by rounding more than elsewhere. Sequence-level
outputs (classification, multiple-choice, the pooled sentence_embedding) are compared whole.

Beside the differences every row reports what users judge a model by: the cosine of mean-pooled outputs
and the lowest per-token cosine (and for logits, arg-max agreement). A length whose difference exceeds
the tolerance passes as a *tie* only when PyTorch, re-run with near-tie picks of its norm selection
swapped, reproduces the ONNX output within the tolerance (ties.py)."""
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import LSGExportError
from ..ops.session import explain_missing_ops
from .pooling import SENTENCE_EMBEDDING
from .tasks import make_inputs
from .ties import SelectionProbe, TIE_RTOL, explain_by_ties, tie_summary

DEFAULT_TEXT = Path("/usr/share/common-licenses/GPL-3")  # on every Debian system: ~6.8k BERT word pieces
DEFAULT_ATOL = {"fp32": 1e-4, "fp16": 1e-2, "O3": 1e-3}  # O3: the tanh Gelu moves results ~1e-4..1e-3


@dataclass
class Comparison:
    length: int
    output: str
    max_abs_diff: float
    mean_abs_diff: float
    argmax_agreement: float = None  # logits only: fraction of rows / tokens whose arg-max agrees
    ok: bool = True
    pooled_cosine: float = None  # lowest over rows of cos(mean over real tokens): what an embedding user reads
    min_token_cosine: float = None  # lowest cosine of one real token's vector (per-token outputs with features)
    tie: dict = None  # passed as a near-tie of the norm selection: {"picks_swapped": k, "max_abs_diff": ...}


@dataclass
class ValidationReport:
    atol: float
    enforced: bool  # False for int8: the differences are reported, never a failure
    batch_size: int
    lengths: list
    inputs: str  # "random ids" or the text file
    rows: list = field(default_factory=list)
    near_ties: dict = field(default_factory=dict)  # length -> {"near_ties": count, "smallest_relative_margin"}

    @property
    def failed_lengths(self):
        return sorted({row.length for row in self.rows if not row.ok})

    @property
    def passed(self):
        return not self.enforced or not self.failed_lengths

    def worst(self):
        return max(self.rows, key=lambda row: row.max_abs_diff) if self.rows else None

    def add_length(self, length, rows, ties=(), rerun=None):
        """Append a length's rows. When some exceed atol and PyTorch recorded near-ties of its norm
        selection, they pass as a tie only if rerun(swaps) -> (rows, SelectionProbe), PyTorch with near-tie
        picks swapped, gives every output within atol; the others stay failures."""
        self.near_ties[length] = tie_summary(ties)
        if self.enforced and ties and rerun is not None and any(not row.ok for row in rows):
            explained = explain_by_ties(ties, rows, rerun)
            if explained is not None:
                swapped, applied = explained
                rows = [row if row.ok else replace(row, ok=True, tie={"picks_swapped": applied,
                                                                       "max_abs_diff": other.max_abs_diff})
                        for row, other in zip(rows, swapped)]
        self.rows += rows

    @property
    def tied_lengths(self):
        return sorted({row.length for row in self.rows if row.tie})

    def failure_message(self):
        bad = [row for row in self.rows if not row.ok]
        if not bad:
            return None
        row = max(bad, key=lambda r: r.max_abs_diff)
        return (f"ONNX Runtime and PyTorch differ above --atol {self.atol:g} at length "
                f"{', '.join(map(str, self.failed_lengths))} (worst: {row.output} at length {row.length}, "
                f"max abs diff {row.max_abs_diff:.3g})")

    def to_dict(self):
        lowest = lambda key: min((getattr(r, key) for r in self.rows if getattr(r, key) is not None),  # noqa: E731
                                 default=None)
        return {"passed": self.passed, "atol": self.atol, "enforced": self.enforced, "batch_size": self.batch_size,
                "lengths": self.lengths, "inputs": self.inputs, "failed_lengths": self.failed_lengths,
                "tied_lengths": self.tied_lengths, "tie_rtol": TIE_RTOL,
                "max_abs_diff": max((r.max_abs_diff for r in self.rows), default=0.0),
                "pooled_cosine": lowest("pooled_cosine"), "min_token_cosine": lowest("min_token_cosine"),
                "near_ties": {str(n): summary for n, summary in self.near_ties.items()},
                "rows": [asdict(row) for row in self.rows]}


def length_status(lengths, length):
    """The progress line of a validation at `length`, one of `lengths`."""
    return f"validating at length {length} ({lengths.index(length) + 1} of {len(lengths)})"


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


@dataclass(frozen=True)
class Document:
    """A document's word pieces and the special tokens its tokenizer frames an input with ([CLS] ... [SEP],
    <s> ... </s>): every row cut from it is framed so, as the tokenizer's encoding of a long text is. Unframed,
    the first word piece takes [CLS]'s place, and its vector and its neighbours' are unlike anything a user's
    input gives (on MiniLM-LSG the lowest per-token cosine of bf16 and int8 fell most there)."""
    pieces: tuple
    prefix: tuple = ()
    suffix: tuple = ()

    def rows(self, batch, length):
        """(batch, length) ids: row r holds the pieces from r * (length - specials) on (wrapping round),
        framed; rows too short for the frame and one piece hold pieces only."""
        frame = len(self.prefix) + len(self.suffix)
        inner = length - frame if length > frame else length
        pieces = torch.tensor(self.pieces, dtype=torch.long)
        need = batch * inner
        body = pieces.repeat(need // pieces.numel() + 1)[:need].reshape(batch, inner)
        if inner == length:
            return body
        framed = lambda ids: torch.tensor(ids, dtype=torch.long).expand(batch, len(ids))  # noqa: E731
        return torch.cat([framed(self.prefix), body, framed(self.suffix)], dim=1)


def text_ids(tokenizer_folder, text_file):
    """The Document of a text file: its word pieces and the tokenizer's special tokens around them."""
    from transformers import AutoTokenizer

    from ..quiet import quiet_transformers
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
        marked = tokenizer.build_inputs_with_special_tokens([-1])  # where the pieces go between the specials
    if not ids:
        raise LSGExportError(f"--text {text_file}: no tokens")
    at = marked.index(-1)
    return Document(tuple(ids), tuple(marked[:at]), tuple(marked[at + 1:]))


def document_inputs(tokenizer_folder, text):
    """(token ids or None, the report's label) of --text FILE (None: random ids)."""
    if not text:
        return None, "random ids"
    return text_ids(tokenizer_folder, text), f"text {Path(text).name}"


def default_text(quantize, tokenizer_folder):
    """The document an export is validated on without --text: int8 is judged on real text (its error on
    random ids says little of what a user sees), GPL-3 where the system has it and the model a tokenizer;
    others on random ids."""
    has_tokenizer = any((Path(tokenizer_folder) / name).is_file() for name in TOKENIZER_FILES)
    return str(DEFAULT_TEXT) if quantize and has_tokenizer and DEFAULT_TEXT.is_file() else None


# The files AutoTokenizer loads a tokenizer from (fast, then the slow tokenizers' vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")


def make_session(path, device, kind=None, options=None):
    """An ONNX Runtime session on `device`, set up as the attention kind needs (options: the caller's
    SessionOptions, e.g. a thread count)."""
    import onnxruntime as ort
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    if kind is not None:
        providers = [p for p in providers if p in kind.providers]
    # TF32 (on by default in the CUDA provider) rounds float32 MatMuls to 10 mantissa bits: a comparison
    # with float32 PyTorch at 1e-4 needs full float32
    providers = [(p, {"use_tf32": "0"}) if p == "CUDAExecutionProvider" else p for p in providers]
    if kind is not None and kind.setup_session is not None:
        kind.setup_session(options)
    try:
        with explain_missing_ops():  # a graph with the custom op, opened without its library: how to build it
            return ort.InferenceSession(str(path), options, providers=providers)
    except LSGExportError:
        raise
    except Exception as error:
        raise LSGExportError(f"ONNX Runtime cannot load {path} ({str(error).splitlines()[0][:300]})") from None


def abs_diffs(reference, got):
    """(max, mean) absolute difference in float64; inf when anything is not finite."""
    diff = np.abs(np.asarray(got, dtype=np.float64) - np.asarray(reference, dtype=np.float64))
    worst = float(diff.max()) if diff.size else 0.0
    return (worst if np.isfinite(worst) else float("inf")), (float(diff.mean()) if diff.size else 0.0)


def _cosine(a, b):
    """Row-wise cosine of (rows, features) float64 arrays; two zero vectors agree (1.0)."""
    dot = (a * b).sum(-1)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    both_zero = (norms == 0) & (np.abs(a).sum(-1) == 0) & (np.abs(b).sum(-1) == 0)
    return np.where(both_zero, 1.0, dot / np.where(norms == 0, 1.0, norms))


def cosines(reference, got, token_mask=None):
    """(pooled cosine, lowest per-token cosine) of an output against its reference.

    Per-token outputs with a feature dim, (batch, tokens, ...): each row mean-pooled over its real tokens
    (`token_mask`, (batch, tokens)), the lowest cosine over rows; and the lowest cosine of any real token's
    vector. Other outputs (sequence-level, or one score per token): the lowest cosine of whole rows over
    the real tokens, and None."""
    reference, got = np.asarray(reference, dtype=np.float64), np.asarray(got, dtype=np.float64)
    n = reference.shape[0]
    if token_mask is not None and reference.ndim > token_mask.ndim and \
            reference.shape[:token_mask.ndim] == token_mask.shape:
        weights = token_mask.astype(np.float64).reshape(*token_mask.shape, *([1] * (reference.ndim - 2)))
        count = np.maximum(weights.sum(1), 1.0)
        pooled = _cosine(((reference * weights).sum(1) / count).reshape(n, -1),
                         ((got * weights).sum(1) / count).reshape(n, -1))
        tokens = _cosine(reference[token_mask].reshape(int(token_mask.sum()), -1),
                         got[token_mask].reshape(int(token_mask.sum()), -1))
        return float(pooled.min()), float(tokens.min()) if tokens.size else 1.0
    if token_mask is not None and reference.shape == token_mask.shape:  # one score per token: rows over real tokens
        reference, got = np.where(token_mask, reference, 0.0), np.where(token_mask, got, 0.0)
    return float(_cosine(reference.reshape(n, -1), got.reshape(n, -1)).min()), None


def _argmax_agreement(reference, got, name, token_mask):
    """Logits: the fraction of predictions that agree. A class dim after the tokens: arg-max per real
    token; per-token scores (question-answering): arg-max over the real tokens of each row."""
    if name in ("last_hidden_state", SENTENCE_EMBEDDING):  # features, not scores
        return None
    if token_mask is None:
        return float((reference.argmax(-1) == got.argmax(-1)).mean())
    if reference.shape == token_mask.shape:
        reference = np.where(token_mask, reference, -np.inf)
        got = np.where(token_mask, got, -np.inf)
    same = reference.argmax(-1) == got.argmax(-1)
    if same.shape == token_mask.shape:
        same = same[token_mask]
    return float(same.mean()) if same.size else 1.0


def compare_output(length, name, reference, value, token_mask, atol, enforced):
    """One output at one length: differences on the real tokens (per-token outputs; token_mask (batch,
    tokens), None: compare whole), cosines and arg-max agreement."""
    if value.shape != reference.shape:
        return Comparison(length, name, float("inf"), float("inf"), 0.0, False)
    agreement = _argmax_agreement(reference, value, name, token_mask)
    pooled, token = cosines(reference, value, token_mask)
    if token_mask is not None and reference.shape[:token_mask.ndim] == token_mask.shape:  # real tokens only
        reference, value = reference[token_mask], value[token_mask]
    max_diff, mean_diff = abs_diffs(reference, value)
    return Comparison(length, name, max_diff, mean_diff, agreement, max_diff <= atol or not enforced, pooled, token)


def compare(session, module, info, task, output_names, lengths, batch_size, atol, enforced, ids=None,
            inputs_label="random ids", progress=None):
    """Run both on each length (batch_size rows, the last padded) and fill a ValidationReport."""
    report = ValidationReport(atol, enforced, batch_size, list(lengths), inputs_label)
    feeds = [i.name for i in session.get_inputs()]
    generator = torch.Generator().manual_seed(0)
    for length in lengths:
        if progress:
            progress(length_status(lengths, length))
        chunk = ids.rows(batch_size, length) if ids is not None else None
        inputs = make_inputs(info, task, batch_size, length, generator=generator, ids=chunk)
        try:
            got = session.run(output_names, {name: inputs[name].numpy() for name in feeds})
        except Exception as error:
            raise LSGExportError(f"ONNX Runtime failed at length {length} ({str(error).splitlines()[0][:300]})") \
                from None
        token_mask = inputs["attention_mask"].bool().numpy()

        def run(swaps=()):
            with torch.no_grad(), SelectionProbe(module, swaps) as probe:
                expected = [t.float().numpy() for t in module(*inputs.values())]
            # the pooled (batch, hidden) output is one vector per row: its shape may equal the mask's
            rows = [compare_output(length, name, reference, value, None if name == SENTENCE_EMBEDDING else token_mask,
                                   atol, enforced) for name, reference, value in zip(output_names, expected, got)]
            return rows, probe

        rows, probe = run()
        report.add_length(length, rows, probe.ties, run)
    return report


def row_status(row, enforced):
    """The verdict of a row: ok, FAIL, tie (k picks swapped) with the swapped run's difference, or report."""
    if row.tie:
        k = row.tie["picks_swapped"]
        return f"[yellow]tie ({k} pick{'s' if k != 1 else ''} swapped: {row.tie['max_abs_diff']:.2e})[/yellow]"
    if not row.ok:
        return "[red]FAIL[/red]"
    return "[green]ok[/green]" if enforced else "[yellow]report[/yellow]"


def render_table(report, title="ONNX Runtime vs PyTorch"):
    """A rich Table of the report (one row per length and output)."""
    from rich.table import Table
    table = Table(title=f"{title} (batch {report.batch_size}, last row padded, {report.inputs}, real tokens; "
                        f"atol {report.atol:g}{'' if report.enforced else ', reported only'})")
    for column in ("length", "output", "max |diff|", "mean |diff|", "pooled cos", "min token cos", "arg-max", ""):
        table.add_column(column, justify="left" if column in ("output", "") else "right", no_wrap=True)
    cosine = lambda value: "-" if value is None else f"{value:.6f}"  # noqa: E731
    for row in report.rows:
        agreement = "-" if row.argmax_agreement is None else f"{100 * row.argmax_agreement:.2f}%"
        table.add_row(str(row.length), row.output, f"{row.max_abs_diff:.2e}", f"{row.mean_abs_diff:.2e}",
                      cosine(row.pooled_cosine), cosine(row.min_token_cosine), agreement,
                      row_status(row, report.enforced))
    return table


__all__ = ["Comparison", "ValidationReport", "DEFAULT_ATOL", "compare", "compare_output", "cosines", "abs_diffs",
           "default_lengths", "default_text", "document_inputs", "length_status", "parse_lengths", "render_table",
           "text_ids", "make_session", "Document"]
