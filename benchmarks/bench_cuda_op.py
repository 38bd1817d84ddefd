"""Time ai.lsg.BlockSparseAttention on a CUDA GPU: the kernel, the op against the gather subgraph, the whole model.

1. op: BERT-base shapes (12 heads, head dim 64, bs 128, sbs 128, sf 2, G 1, norm) at 16384 tokens,
   float16. The kernel alone through the ctypes harness (no ONNX Runtime needed), its throughput as
   a fraction of the GPU's peak float16 tensor-core rate (FLOPs of the keys each block actually
   visits: 4 * rows * visible keys * d), and, with onnxruntime-gpu, the custom-op node against the
   gather subgraph on the CUDA execution provider (each exported alone, IO binding, same inputs).
2. model (--model-lengths, default 8192,16384): the bundled MiniLM converted to LSG, exported with
   --attention custom-op --fp16 (and the gather graph --fp16 for reference), against the PyTorch LSG
   model in float16 and the same weights with full attention (scaled_dot_product_attention).

Timings are medians of CUDA-synchronised runs after warm-up, all in one process. Results go to
--json (default: $OUT/bench_cuda_op.json when $OUT is set) and stdout.

    python benchmarks/bench_cuda_op.py [--tokens 16384] [--model-lengths 8192,16384] [--no-model] [--json FILE]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

from lsg_export.modeling.lsg_attention import LSGAttention, block_attention
from lsg_export.ops import cuda_harness

# dense float16 tensor-core peaks (float32 accumulation), TFLOP/s, from the vendors' data sheets;
# matched in order against torch.cuda.get_device_name()
PEAK_FP16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4),
                    ("GH200", 989.4), ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0), ("A10", 125.0))


def peak_tflops(name, override=None):
    if override:
        return override
    return next((peak for key, peak in PEAK_FP16_TFLOPS if key in name), None)


def cuda_median(call, repeat, warmup=3):
    """Median seconds of `call()` over `repeat` runs, each bracketed by CUDA events."""
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def wall_median(call, sync, repeat, warmup=3):
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def visited_flops(key_mask, sparse_mask, heads, num_global, bs, sbs, sf, head_dim):
    """4 * bs * (visible keys of the block) * d summed over every (batch, head, block): the work the
    kernel does (Q.K^T and P.V, 2 FLOPs per multiply-add), masked keys excluded."""
    n, t = key_mask.shape[0], key_mask.shape[2]
    blocks, c = t // bs, bs // sf
    visible = (key_mask.reshape(n, t) > -65504).float()
    total = 0.0
    for i in range(blocks):
        keys = num_global * heads + heads * visible[:, max(0, (i - 1) * bs):min(t, (i + 2) * bs)].sum(1)
        if sparse_mask is not None and sbs:
            smask = (sparse_mask.reshape(n, sparse_mask.shape[1], -1) > -65504).float()
            ts = smask.shape[-1]
            for begin in ((i - 1) * c - sbs, (i + 2) * c):
                part = smask[:, :, max(0, begin):max(0, min(ts, begin + sbs))].sum(-1)
                keys = keys + (part.sum(1) if smask.shape[1] == heads else heads * part[:, 0])
        total += float(keys.sum()) * 4 * bs * head_dim
    return total


def op_inputs(args, device):
    torch.manual_seed(0)
    n, h, t, d, g = args.batch, args.heads, args.tokens, args.head_dim, args.globals
    q, k, v = (torch.randn(n, h, t, d, device=device) for _ in range(3))
    global_k, global_v = torch.randn(n, h, g, d, device=device), torch.randn(n, h, g, d, device=device)
    key_mask = torch.zeros(n, 1, t, 1, device=device)
    if args.padding:
        key_mask[:, :, t - int(t * args.padding):] = torch.finfo(torch.float32).min
    config = types.SimpleNamespace(block_size=args.block_size, sparse_block_size=args.sparse_block_size,
                                   sparsity_factor=args.sparsity_factor, sparsity_type=args.sparsity_type,
                                   num_global_tokens=g)
    sparse = LSGAttention(config).compress(q, k, v, key_mask)
    return [q, k, v, key_mask, global_k, global_v, *sparse]


def bench_op(args, results):
    geometry = (args.block_size, args.sparse_block_size, args.sparsity_factor)
    inputs = op_inputs(args, "cuda")
    expected = block_attention(*inputs, *geometry)
    halves = [x.clamp(min=-65504).half() for x in inputs]
    name = torch.cuda.get_device_name()
    flops = visited_flops(inputs[3], inputs[8], args.heads, args.globals, *geometry, args.head_dim)
    peak = peak_tflops(name, args.peak_tflops)
    record = {"gpu": name, "shapes": {"batch": args.batch, "heads": args.heads, "tokens": args.tokens,
                                      "head_dim": args.head_dim, "globals": args.globals, "block_size": geometry[0],
                                      "sparse_block_size": geometry[1], "sparsity_factor": geometry[2],
                                      "sparsity_type": args.sparsity_type, "padding": args.padding},
              "visited_gflop": flops / 1e9, "peak_fp16_tflops": peak}
    run = lambda: cuda_harness.block_sparse_attention_cuda(*halves, block_size=geometry[0],  # noqa: E731
                                                            sparse_block_size=geometry[1], sparsity_factor=geometry[2])
    record["kernel_max_abs_diff"] = float((run().float() - expected).abs().max())
    seconds = cuda_median(run, args.repeat)
    record["kernel_ms"] = seconds * 1e3
    record["kernel_tflops"] = flops / seconds / 1e12
    record["kernel_fraction_of_peak"] = flops / seconds / 1e12 / peak if peak else None
    print(f"{name}: kernel {seconds * 1e3:.3f} ms, {record['kernel_tflops']:.1f} TFLOP/s"
          + (f" = {100 * record['kernel_fraction_of_peak']:.1f}% of {peak:g}" if peak else "")
          + f" (max |diff| vs float32 torch {record['kernel_max_abs_diff']:.2e})")
    results["op"] = record
    try:
        bench_op_ort(args, halves, expected, record)
    except ImportError as error:
        record["ort"] = f"skipped: {error}"
        print(f"ONNX Runtime part skipped: {error}")


def bench_op_ort(args, halves, expected, record):
    import onnxruntime as ort

    from lsg_export.onnx.attention_kinds import get_attention_kind
    from lsg_export.onnx.export import export_block_attention
    from lsg_export.onnx.validate import make_session

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ImportError("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    geometry = (args.block_size, args.sparse_block_size, args.sparsity_factor)
    names = cuda_harness.INPUT_NAMES
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("gather", "custom-op"):
            backend = get_attention_kind(kind)
            path = export_block_attention(backend, [x.cpu() for x in halves], os.path.join(tmp, f"{kind}.onnx"),
                                          *geometry)
            session = make_session(path, "cuda", backend)
            binding = session.io_binding()  # device pointers of the torch tensors: nothing copied per run
            wanted = {i.name for i in session.get_inputs()}
            for name, x in zip(names, halves):
                if name in wanted:
                    binding.bind_input(name, "cuda", 0, np.float16, tuple(x.shape), x.data_ptr())
            out = torch.empty_like(halves[0])
            binding.bind_output("out", "cuda", 0, np.float16, tuple(out.shape), out.data_ptr())
            session.run_with_iobinding(binding)
            torch.cuda.synchronize()
            diff = float((out.float() - expected).abs().max())
            times[kind] = wall_median(lambda: session.run_with_iobinding(binding), torch.cuda.synchronize, args.repeat)
            record[f"ort_{kind.replace('-', '_')}_ms"] = times[kind] * 1e3
            record[f"ort_{kind.replace('-', '_')}_max_abs_diff"] = diff
            print(f"ORT CUDA EP {kind:9s}: {times[kind] * 1e3:8.3f} ms (max |diff| vs float32 torch {diff:.2e})")
    record["ort_speedup_vs_gather"] = times["gather"] / times["custom-op"]
    print(f"custom op vs gather subgraph: {record['ort_speedup_vs_gather']:.2f}x (target >= 3x)")


def bench_model(args, results):
    from lsg_export import convert
    from dataclasses import replace

    from lsg_export.bench.backends import load_ort, load_torch_dense, load_torch_lsg
    from lsg_export.bench.worker_spec import WorkerSpec
    from lsg_export.onnx import export_onnx

    lengths = [int(x) for x in args.model_lengths.split(",") if x]
    top = max(lengths)
    work = Path(tempfile.mkdtemp(prefix="bench-cuda-"))
    folder = convert(None, work / "minilm", max_sequence_length=top).path
    spec = WorkerSpec("torch-lsg", str(folder), "feature-extraction", device="cuda", threads=1, lengths=tuple(lengths))
    runners = {"torch-lsg-fp16": load_torch_lsg(spec), "torch-sdpa-fp16": load_torch_dense(spec)}
    for kind in ("custom-op", "gather"):
        try:
            out = work / f"onnx-{kind}"
            export_onnx(folder, out, attention=kind, fp16=True, device="cuda", optimize=args.optimize,
                        lengths=[1000], atol=2e-2)
            runners[f"ort-{kind}-fp16"] = load_ort(replace(spec, backend="ort-fp16", export=str(out)))
        except Exception as error:  # one backend failing must not lose the others' figures
            results.setdefault("model_errors", {})[kind] = str(error).splitlines()[0][:300]
            print(f"ort-{kind}-fp16 skipped: {str(error).splitlines()[0][:300]}")
    table = {}
    for length in lengths:
        row = {}
        for name, runner in runners.items():
            try:
                call = runner.prepare(1, length)
                row[name] = wall_median(call, runner.sync, args.model_repeat) * 1e3
            except Exception as error:
                row[name] = f"failed: {str(error).splitlines()[0][:200]}"
            torch.cuda.empty_cache()
        op = row.get("ort-custom-op-fp16")
        for name in ("torch-lsg-fp16", "torch-sdpa-fp16", "ort-gather-fp16"):
            if isinstance(op, float) and isinstance(row.get(name), float):
                row[f"custom_op_speedup_vs_{name}"] = row[name] / op
        table[length] = row
        print(f"model, batch 1, {length} tokens: " + ", ".join(
            f"{k} {v:.2f}" + ("x" if k.startswith("custom_op") else " ms") if isinstance(v, float) else f"{k} {v}"
            for k, v in row.items()))
    results["model"] = {"model": "bundled all-MiniLM-L6-v2 converted to LSG (norm, bs 128, sbs 128, sf 2, G 1)",
                        "optimize": args.optimize, "ms_and_ratios": table}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shapes = dict(tokens=16384, heads=12, head_dim=64, block_size=128, sparse_block_size=128, sparsity_factor=2,
                  globals=1, batch=1)  # BERT-base shapes
    for name, default in shapes.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    parser.add_argument("--sparsity-type", default="norm")
    parser.add_argument("--padding", type=float, default=0.0, help="fraction of masked tokens at the end")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense float16 tensor-core peak [default: table]")
    parser.add_argument("--model-lengths", default="8192,16384")
    parser.add_argument("--model-repeat", type=int, default=10)
    parser.add_argument("--optimize", default="O2", help="export optimisation level of the whole-model graphs")
    parser.add_argument("--no-model", action="store_true", help="only the op")
    parser.add_argument("--json", help="write the results here [default: $OUT/bench_cuda_op.json if $OUT is set]")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: needs a CUDA GPU and a CUDA build of torch", file=sys.stderr)
        return 2
    results = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    try:
        bench_op(args, results)
        if not args.no_model:
            bench_model(args, results)
    finally:
        target = args.json or (os.path.join(os.environ["OUT"], "bench_cuda_op.json") if os.environ.get("OUT") else None)
        if target:
            Path(target).write_text(json.dumps(results, indent=1, default=str) + "\n")
            print(f"results: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
