"""Which linear layers lose most in int8: each weight of a float32 export quantized alone, then the worst kept float.

For a float32 `lsg-export onnx` folder (O2 or not, gather or custom-op), quantizes the MatMuls of one weight at a time
(ONNX Runtime's dynamic int8, per-channel weight scales, as `--quantize int8`; the FFN's row tiles share their
weight), runs the first LENGTH tokens of a document, and reports the mean-pooled and lowest per-token cosine of
last_hidden_state to the float32 graph's. Then quantizes everything but the K worst weights, for K in --keep, and
reports the same with the run time (median of --repeat runs, one session at a time). `lsg-export onnx --quantize
int8 --keep-float K` makes such a graph, ranking the weights the same way on the validation text.

    python benchmarks/int8_sensitivity.py minilm-onnx-o2 --length 4096 --keep 0,2,4,6 --json sensitivity.json
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def matmuls_by_weight(model_path):
    """{weight name: [MatMul node names]} in graph order (the library's ranking reads them the same way)."""
    import onnx

    from lsg_export.onnx.int8_sensitivity import matmuls_by_weight as by_weight
    return by_weight(onnx.load(str(model_path), load_external_data=False))


def quantize(source, target, nodes):
    from lsg_export.onnx.optimize import quantize_matmuls
    quantize_matmuls(source, target, external_data=False, only=nodes)


def session(path, threads):
    import onnxruntime as ort

    from lsg_export.ops import session_options_with_ops
    options = session_options_with_ops()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds_for(export, text, length, sess):
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(Path(export) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    ids = np.array([tokenizer.encode(Path(text).read_text()).ids[:length]], dtype=np.int64)
    columns = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {i.name: columns[i.name] for i in sess.get_inputs()}


def cosines(reference, output):
    """(mean-pooled cosine, lowest per-token cosine) of (1, tokens, hidden) outputs: the validation's figures."""
    from lsg_export.onnx.validate import cosines as validation_cosines
    return validation_cosines(reference, output, np.ones(reference.shape[:2], dtype=bool))


def timed(sess, feeds, repeat):
    sess.run(["last_hidden_state"], feeds)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        output = sess.run(["last_hidden_state"], feeds)[0]
        times.append(time.perf_counter() - start)
    return output, statistics.median(times) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--keep", default="0,2,4,6", help="numbers of worst weights kept in float32")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = args.export / "model.onnx"
    groups = matmuls_by_weight(model)
    reference_session = session(model, args.threads)
    feeds = feeds_for(args.export, args.text, args.length, reference_session)
    reference, float_ms = timed(reference_session, feeds, args.repeat)
    del reference_session
    report = {"export": str(args.export), "length": int(feeds["input_ids"].shape[1]), "threads": args.threads,
              "float32_ms": round(float_ms, 1), "alone": [], "kept_float": []}
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model.onnx"
        for index, (weight, nodes) in enumerate(groups.items()):
            quantize(model, target, nodes)
            output = session(target, args.threads).run(["last_hidden_state"], feeds)[0]
            pooled, lowest = cosines(reference, output)
            report["alone"].append({"weight": weight, "matmuls": nodes, "index": index,
                                    "pooled_cosine": pooled, "min_token_cosine": lowest})
            print(f"{index:3d} {weight:12s} x{len(nodes):<3d} pooled {pooled:.6f} lowest {lowest:.5f}",
                  file=sys.stderr, flush=True)
        worst = sorted(report["alone"], key=lambda r: r["min_token_cosine"])
        for keep in [int(k) for k in args.keep.split(",")]:
            kept = {r["weight"] for r in worst[:keep]}
            quantize(model, target, [n for w, nodes in groups.items() if w not in kept for n in nodes])
            output, ms = timed(session(target, args.threads), feeds, args.repeat)
            pooled, lowest = cosines(reference, output)
            report["kept_float"].append({"keep": keep, "weights": sorted(kept), "pooled_cosine": pooled,
                                         "min_token_cosine": lowest, "ms": round(ms, 1)})
            print(f"keep {keep}: pooled {pooled:.6f} lowest {lowest:.5f} {ms:.1f} ms (float32 {float_ms:.1f} ms)",
                  file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
