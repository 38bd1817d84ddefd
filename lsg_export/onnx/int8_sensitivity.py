"""--keep-float N: int8 kept off the weights that lose most, found by measurement on the validation text.

Each MatMul weight of the float graph (the FFN's row tiles share theirs) is quantized alone, the graph run on
the first RANKING_TOKENS tokens of the validation text (random ids without one), and its first output compared
with the float graph's by the lowest per-token cosine, the figure int8 misses first (then the pooled cosine).
The N weights that lose most keep their MatMuls in float32, the rest go to int8 as with plain --quantize int8.
On MiniLM-LSG at 4096 tokens of GPL-3 (2026-12-06, idle 2-core Intel Xeon with AMX, docs/benchmarks.md) one
weight alone costs little (lowest token 0.990 - 0.9999), their losses add up (plain int8: 0.9975 / 0.9545
mean-pooled / lowest token); `--keep-float 12` gave 0.99922 / 0.9880 in the bench's comparison (0.99901 / 0.99059
with [CLS] / [SEP]) at 1.24x plain int8's time. The losses also interact: keeping weights is measured, not a
promise of a closer output.
"""
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RANKING_TOKENS = 2048


@dataclass
class KeptFloat:
    """The weights kept in float32, their MatMul nodes, and the ranking that chose them (worst first)."""
    weights: list
    matmuls: list
    ranking: list
    tokens: int

    def record(self):
        """export.json's quantize.kept_float."""
        return {"count": len(self.weights), "weights": self.weights, "float_matmuls": len(self.matmuls),
                "ranked_on_tokens": self.tokens, "ranking": self.ranking}


def matmuls_by_weight(model):
    """{weight initializer: [names of the MatMul nodes that multiply by it]}, in graph order."""
    weights = {tensor.name for tensor in model.graph.initializer}
    groups = {}
    for node in model.graph.node:
        if node.op_type == "MatMul":
            for name in node.input:
                if name in weights:
                    groups.setdefault(name, []).append(node.name)
    return groups


def ranking_feeds(session, document, vocab_size, tokens=RANKING_TOKENS):
    """One row of the document's first `tokens` ids, framed by its special tokens (validate.Document), or
    seeded random ids, for each graph input."""
    if document is not None:
        frame = len(document.prefix) + len(document.suffix)
        row = document.rows(1, min(tokens, len(document.pieces) + frame)).numpy().reshape(-1)
    else:
        row = np.random.default_rng(0).integers(5, vocab_size, tokens)
    row = row[None, :].astype(np.int64)
    columns = {"input_ids": row, "attention_mask": np.ones_like(row), "token_type_ids": np.zeros_like(row)}
    return {i.name: columns[i.name] for i in session.get_inputs()}


def choose_kept_float(path, count, external_data, open_session, ids, vocab_size, seq, status=None):
    """The `count` weights of the graph at `path` (inputs up to `seq` tokens) whose int8 alone costs most (a
    KeptFloat)."""
    import onnx

    from .optimize import quantize_matmuls
    groups = matmuls_by_weight(onnx.load(str(path), load_external_data=False))
    reference_session = open_session(path)
    feeds = ranking_feeds(reference_session, ids, vocab_size, min(RANKING_TOKENS, seq))
    output = reference_session.get_outputs()[0].name
    reference = reference_session.run([output], feeds)[0]
    del reference_session
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / path.name

        def int8_alone(nodes):
            quantize_matmuls(path, target, external_data, only=nodes)
            return open_session(target).run([output], feeds)[0]

        ranking = rank_weights(groups, reference, int8_alone, feeds["attention_mask"].astype(bool), status)
    return kept_float(groups, ranking, count, int(feeds["input_ids"].shape[1]))


def rank_weights(groups, reference, int8_alone, mask, status=None):
    """The weights of `groups` ({weight: [MatMul names]}), the costliest first: int8_alone(names) is the first
    output with only those MatMuls in int8, compared with `reference` (the float output) by the lowest
    per-token cosine, then the mean-pooled one. The runtime's own loop: ONNX Runtime's and OpenVINO's int8."""
    from .validate import cosines
    status = status or (lambda message: None)
    ranking = []
    for index, (weight, nodes) in enumerate(groups.items()):
        status(f"ranking the weights' int8 loss ({index + 1} of {len(groups)})")
        pooled, lowest = cosines(reference, int8_alone(nodes), mask)
        ranking.append({"weight": weight, "matmuls": len(nodes), "pooled_cosine": round(pooled, 7),
                        "min_token_cosine": None if lowest is None else round(lowest, 7)})
    ranking.sort(key=lambda r: (r["min_token_cosine"] if r["min_token_cosine"] is not None else 1.0,
                                r["pooled_cosine"]))
    return ranking


def kept_float(groups, ranking, count, tokens):
    """The KeptFloat of the `count` first weights of `ranking`."""
    kept = [r["weight"] for r in ranking[:count]]
    return KeptFloat(kept, [n for w in kept for n in groups[w]], ranking, tokens)
