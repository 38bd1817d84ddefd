"""Near-ties of the `norm` selection, for a validation that fails neither on rounding nor lets a bug pass.

`norm` keeps, per chunk of m keys and per head, the m/sf keys of largest norm. Where the last kept and the
first dropped norm differ by no more than float32 rounding, two correct implementations (PyTorch and ONNX
Runtime, or a kernel) may keep different keys, and their outputs then differ by far more than rounding.
`SelectionProbe` records every such near-tie of a PyTorch run, and re-runs with chosen picks swapped, so
that a difference is accepted only when PyTorch, given the other implementation's choice of a near-tie,
reproduces its output.

The threshold: a margin (last kept - first dropped) counts as a near-tie when it is at most TIE_RTOL x the
kept norm, TIE_RTOL = 2^-16 = 128 float32 machine epsilons (2^-23). The norms are sums of d squares of
keys that come out of a float32 computation through every earlier layer; measured on MiniLM-LSG with
GPL-3 at 1000 to 4096 tokens, ONNX Runtime's norms (the TopK inputs) differ from PyTorch's by up to
3.7e-6 relative (31 epsilons), so two norms can swap order when their margin is below ~62 epsilons:
the threshold leaves twice that. Margins with a dropped norm of 0 (masked keys) are not ties: what is
picked among masked keys changes nothing.

Which near-ties the other side flipped is not known: `explain_by_ties` tries them greedily, smallest
relative margin first, keeping a swap when it brings PyTorch closer to the other output (mean abs diff),
until every output is within the tolerance."""
from dataclasses import dataclass
from functools import partial

from ..modeling.lsg_attention import norm_top_positions

TIE_RTOL = 2.0 ** -16
MAX_TRIES = 8  # near-ties tried per failing length (one PyTorch run each); flips are rare, several rarer


@dataclass(frozen=True)
class NearTie:
    layer: str  # the LSGAttention module's name
    batch: int
    head: int
    chunk: int
    kept: int  # position (in the padded tokens) of the last key kept
    dropped: int  # position of the first key dropped
    margin: float  # kept norm - dropped norm
    norm: float  # the kept norm


def norm_selectors(module):
    """{name: LSGAttention} of the layers of `module` whose compression ranks key norms."""
    return {name: layer for name, layer in module.named_modules()
            if hasattr(layer, "select_positions") and layer.uses_sparse and layer.sparsity_type == "norm"
            and layer.sparsity_factor > 1}


class SelectionProbe:
    """A context in which every norm selection of `module` records its near-ties (`ties`, in call order)
    and applies `swaps` (NearTies whose dropped key is taken in place of the kept one).

    `applied` counts the swaps that found their kept key still picked (a swap in an earlier layer can move
    a later layer's norms)."""

    def __init__(self, module, swaps=(), rtol=TIE_RTOL):
        self.layers = norm_selectors(module)
        self.rtol = rtol
        self.swaps = {}
        for tie in swaps:
            self.swaps.setdefault(tie.layer, []).append(tie)
        self.ties, self.applied = [], 0

    def __enter__(self):
        for name, layer in self.layers.items():
            layer.select_positions = partial(self._select, name)
        return self

    def __exit__(self, *exc):
        for layer in self.layers.values():
            layer.select_positions = norm_top_positions

    def _select(self, name, norms, chunk, sparsity_factor):
        index = norm_top_positions(norms, chunk, sparsity_factor)
        self.ties += near_ties(name, norms, chunk, sparsity_factor, self.rtol)
        for tie in self.swaps.get(name, ()):
            self.applied += swap_pick(index, tie, chunk // sparsity_factor)
        return index


def near_ties(name, norms, chunk, sparsity_factor, rtol):
    """NearTies of one selection: norms (n, h, T), chunks of `chunk` keys keeping chunk/sf each."""
    n, h, t = norms.shape
    keep = chunk // sparsity_factor
    values, order = norms.reshape(n, h, -1, chunk).sort(dim=-1, descending=True)
    last_kept, first_dropped = values[..., keep - 1], values[..., keep]
    margin = last_kept - first_dropped
    near = (margin <= rtol * last_kept) & (first_dropped > 0)
    ties = []
    for b, head, c in near.nonzero().tolist():
        ties.append(NearTie(name, b, head, c, c * chunk + int(order[b, head, c, keep - 1]),
                            c * chunk + int(order[b, head, c, keep]), float(margin[b, head, c]),
                            float(last_kept[b, head, c])))
    return ties


def swap_pick(index, tie, keep):
    """In the selection `index` (n, h, T/sf), the tie's dropped key in place of its kept key. 1 if done."""
    picks = index[tie.batch, tie.head, tie.chunk * keep:(tie.chunk + 1) * keep]
    slot = (picks == tie.kept).nonzero()
    if not len(slot) or bool((picks == tie.dropped).any()):
        return 0
    picks[int(slot[0, 0])] = tie.dropped
    return 1


def relative_margin(tie):
    return tie.margin / tie.norm


def explain_by_ties(ties, rows, rerun, max_tries=MAX_TRIES):
    """Whether a length's failing rows are explained by near-tie flips.

    ties: the NearTies PyTorch recorded; rows: the length's Comparisons (some not ok); rerun(swaps) ->
    (rows of PyTorch re-run with `swaps` against the same other output, its SelectionProbe). Returns
    (rows, picks swapped) of the first swapped run whose rows are all ok, else None."""
    score = lambda comparisons: sum(row.mean_abs_diff for row in comparisons)  # noqa: E731
    chosen, best = [], score(rows)
    for tie in sorted(ties, key=relative_margin)[:max_tries]:
        trial, probe = rerun(chosen + [tie])
        if all(row.ok for row in trial):
            return trial, probe.applied
        if score(trial) < best:
            chosen, best = chosen + [tie], score(trial)
    return None


def tie_summary(ties):
    """What a report says of the near-ties of a run: count and smallest relative margin."""
    return {"near_ties": len(ties),
            "smallest_relative_margin": min((t.margin / t.norm for t in ties), default=None)}


__all__ = ["TIE_RTOL", "MAX_TRIES", "NearTie", "SelectionProbe", "explain_by_ties", "near_ties", "norm_selectors",
           "relative_margin", "swap_pick", "tie_summary"]
