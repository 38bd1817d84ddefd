"""ONNX Runtime (gather and custom-op graphs) vs PyTorch on one long input, same thread count; prints ratios.

    python benchmarks/bench_onnx.py                       # converts the bundled MiniLM to LSG (4096) first
    python benchmarks/bench_onnx.py lsg-all-MiniLM-L6-v2-4096 --levels none,O2 --threads 2 --profile
    python benchmarks/bench_onnx.py --attention gather,custom-op --levels none

For each --attention kind and --optimize level it exports (timed) to a temporary folder, then times batch 1 x --length
tokens: the PyTorch model with torch.set_num_threads(N) and ONNX Runtime with intra_op_num_threads=N.
--profile prints ONNX Runtime's time per op type for the fastest level.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def ort_session(path, threads, profile=False, disabled_optimizers=(), custom_ops=False):
    import onnxruntime as ort

    from lsg_export.ops import session_options_with_ops
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = profile
    options.log_severity_level = 3
    if disabled_optimizers:  # a session option, so optimum's ORTModel(session_options=...) can do the same
        options.add_session_config_entry("optimization.disable_specified_optimizers", ",".join(disabled_optimizers))
    if custom_ops:
        options = session_options_with_ops(options)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def op_profile(session, feed, runs=2):
    for _ in range(runs):
        session.run(None, feed)
    trace = json.loads(Path(session.end_profiling()).read_text())
    per_op, total = defaultdict(float), 0.0
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            per_op[op] += event["dur"] / 1000 / runs
            total += event["dur"] / 1000 / runs
    return total, sorted(per_op.items(), key=lambda kv: -kv[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="converted LSG folder [default: convert the bundled MiniLM]")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--levels", default="none,O1,O2,O3", help="--optimize levels to export and time")
    parser.add_argument("--attention", default="gather", help="attention kinds to export and time, e.g. "
                        "gather,custom-op")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--opset", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="ONNX Runtime time per op type (fastest level)")
    parser.add_argument("--keep", help="export into this folder (kept) instead of a temporary one")
    parser.add_argument("--reuse", action="store_true", help="with --keep: reuse exports already there")
    parser.add_argument("--also-without-skip-layernorm", action="store_true",
                        help="also time the raw graph in a session with SkipLayerNormFusion disabled (its CPU kernel "
                             "is slower than Add + LayerNormalization here)")
    args = parser.parse_args()

    import torch

    from lsg_export import convert
    from lsg_export.onnx import export_onnx
    from lsg_export.onnx.export import DEFAULT_OPSET
    from lsg_export.onnx.pipeline import load_torch_model
    from lsg_export.onnx.tasks import TaskModule, make_inputs, read_model_folder

    torch.set_num_threads(args.threads)
    scratch = None if args.keep else tempfile.TemporaryDirectory(prefix="bench-onnx-")  # removed at exit
    work = Path(args.keep) if args.keep else Path(scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    folder = args.model
    if folder is None:
        folder = work / "lsg-minilm"
        if not (folder / "config.json").is_file():
            print(f"converting the bundled MiniLM to {folder}", file=sys.stderr)
            convert(None, folder, max_sequence_length=max(4096, args.length), force=True)
    info = read_model_folder(folder)
    if args.length > info.max_length:
        sys.exit(f"--length {args.length} is above the model's {info.max_length}")

    # PyTorch: the task the export uses, batch 1, no padding
    from lsg_export.onnx.tasks import HEAD_TASKS
    task = HEAD_TASKS[info.head]
    module = TaskModule(load_torch_model(info), task).eval()
    inputs = make_inputs(info, task, 1, args.length)
    feed = {k: v.numpy() for k, v in inputs.items()}

    levels = [x.strip() for x in args.levels.split(",") if x.strip()]
    kinds = [x.strip() for x in args.attention.split(",") if x.strip()]
    exports = {}  # "<attention> <level>" -> (folder, export seconds, export.json)
    for kind in kinds:
        for level in levels:
            name, out = f"{kind} {level}", work / f"onnx-{kind}-{level}"
            if args.reuse and (out / "export.json").is_file():
                exports[name] = (out, None, json.loads((out / "export.json").read_text()))
                continue
            start = time.perf_counter()
            result = export_onnx(folder, out, seq=args.length, optimize=level, attention=kind, force=True,
                                 opset=args.opset or DEFAULT_OPSET, lengths=[min(37, args.length)])
            exports[name] = (out, time.perf_counter() - start, result.info)
            print(f"exported {name} in {exports[name][1]:.1f} s", file=sys.stderr, flush=True)

    # interleaved rounds: PyTorch, then each ONNX Runtime session, so that load changes hit all alike
    sessions = {name: ort_session(out / "model.onnx", args.threads, custom_ops=bool(meta.get("custom_ops")))
                for name, (out, _, meta) in exports.items()}
    raw = next((name for name in exports if name.endswith(" none")), None)
    tuned = f"{raw}, no SkipLN" if args.also_without_skip_layernorm and raw else None
    if tuned:
        sessions[tuned] = ort_session(exports[raw][0] / "model.onnx", args.threads,
                                      disabled_optimizers=["SkipLayerNormFusion"],
                                      custom_ops=bool(exports[raw][2].get("custom_ops")))
    runners = {"torch": lambda: module(*inputs.values())}
    runners.update({level: (lambda s=s: s.run(None, feed)) for level, s in sessions.items()})
    times = {name: [] for name in runners}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for fn in runners.values():
                fn()
        for _ in range(args.repeat):
            for name, fn in runners.items():
                begin = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - begin)
    medians = {name: statistics.median(t) for name, t in times.items()}
    torch_median = medians["torch"]
    print(f"PyTorch {torch.__version__} vs ONNX Runtime, {args.length} tokens, batch 1, {args.threads} threads, "
          f"median of {args.repeat} interleaved rounds")
    print(f"{'':>22} {'export s':>9} {'nodes':>6} {'median s':>9} {'best s':>7} {'x torch':>8}")
    print(f"{'PyTorch':>22} {'':>9} {'':>6} {torch_median:9.3f} {min(times['torch']):7.3f} {1:8.2f}")
    for level, (out, export_seconds, meta) in exports.items():
        nodes = meta["optimize"]["nodes_after"] if meta.get("optimize") else meta["graph"]["nodes"]
        seconds = f"{export_seconds:9.1f}" if export_seconds else f"{'(reused)':>9}"
        print(f"{'ORT ' + level:>22} {seconds} {nodes:6d} {medians[level]:9.3f} {min(times[level]):7.3f} "
              f"{torch_median / medians[level]:8.2f}")
    if tuned:
        print(f"{'ORT ' + raw + '*':>22} {'':>9} {'':>6} {medians[tuned]:9.3f} {min(times[tuned]):7.3f} "
              f"{torch_median / medians[tuned]:8.2f}   (* session option optimization.disable_specified_optimizers="
              f"SkipLayerNormFusion)")
    best = min(exports, key=lambda level: medians[level])
    print(f"\nratio (PyTorch / ONNX Runtime, best: {best}): {torch_median / medians[best]:.2f}x "
          f"at {args.length} tokens, batch 1, {args.threads} threads")
    for level in levels:  # the custom op against the gather graph, same level
        if f"gather {level}" in medians and f"custom-op {level}" in medians:
            print(f"custom-op / gather, --optimize {level}: "
                  f"{medians[f'gather {level}'] / medians[f'custom-op {level}']:.2f}x faster")

    if args.profile:
        session = ort_session(exports[best][0] / "model.onnx", args.threads, profile=True,
                              custom_ops=bool(exports[best][2].get("custom_ops")))
        total, per_op = op_profile(session, feed)
        print(f"\nONNX Runtime kernel time per op type (--optimize {best}, {total:.0f} ms per run):")
        for op, ms in per_op[:20]:
            print(f"  {op:28s} {ms:8.1f} ms  {100 * ms / total:5.1f}%")


if __name__ == "__main__":
    main()
