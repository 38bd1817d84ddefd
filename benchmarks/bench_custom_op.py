"""Time ai.lsg.BlockSparseAttention against the gather subgraph it replaces, in ONNX Runtime (CPU).

Same inputs, same thread count: each attention kind's block attention exported alone
(lsg_export.onnx.export.export_block_attention): the gather subgraph, and one ai.lsg node.
Defaults: MiniLM shapes at 4096 tokens (12 heads, head dim 32, bs 128, sbs 128, sf 2, G 1, norm).

    python benchmarks/bench_custom_op.py [--tokens 4096] [--threads N] [--repeat 20]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
import types

import numpy as np
import onnxruntime as ort
import torch

from lsg_export.modeling.lsg_attention import LSGAttention, block_attention
from lsg_export.onnx.attention_kinds import get_attention_kind
from lsg_export.onnx.export import export_block_attention
from lsg_export.onnx.validate import make_session

NAMES = ("q", "k", "v", "key_mask", "global_k", "global_v", "sparse_k", "sparse_v", "sparse_mask")


def interleaved(runs, repeat, warmup=3):
    """{name: (median wall seconds, median CPU seconds of this process, output)}, the runs alternated
    round by round so that a change of load on the machine hits all alike. CPU time is what a busy
    machine does not inflate (with 1 thread it is the run's own compute time)."""
    outputs = {name: None for name in runs}
    for _ in range(warmup):
        for name, run in runs.items():
            outputs[name] = run()
    wall, cpu = {name: [] for name in runs}, {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name]), outputs[name]) for name in runs}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--sparse-block-size", type=int, default=128)
    parser.add_argument("--sparsity-factor", type=int, default=2)
    parser.add_argument("--sparsity-type", default="norm")
    parser.add_argument("--globals", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    bs, sbs, sf = args.block_size, args.sparse_block_size, args.sparsity_factor

    torch.manual_seed(0)
    n, h, t, d = args.batch, args.heads, args.tokens, args.head_dim
    q, k, v = (torch.randn(n, h, t, d) for _ in range(3))
    global_k, global_v = torch.randn(n, h, args.globals, d), torch.randn(n, h, args.globals, d)
    key_mask = torch.zeros(n, 1, t, 1)
    key_mask[:, :, t - t // 10:] = torch.finfo(torch.float32).min  # 10% padding at the end
    config = types.SimpleNamespace(block_size=bs, sparse_block_size=sbs, sparsity_factor=sf,
                                   sparsity_type=args.sparsity_type, num_global_tokens=args.globals)
    sparse = LSGAttention(config).compress(q, k, v, key_mask)
    inputs = [q, k, v, key_mask, global_k, global_v, *sparse]
    feeds = {name: x.contiguous().numpy() for name, x in zip(NAMES, inputs)}
    expected = block_attention(*inputs, bs, sbs, sf).numpy()

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Each session has its own thread pool, whose workers spin for a while after a run: in
    # alternated rounds they would steal the cores from the other session's next run.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("gather", "custom-op"):  # each attention kind's block attention alone, same inputs
            backend = get_attention_kind(kind)
            path = export_block_attention(backend, inputs, os.path.join(tmp, f"{kind}.onnx"), bs, sbs, sf)
            session = make_session(path, "cpu", backend, options)
            feed = {i.name: feeds[i.name] for i in session.get_inputs()}
            runs[kind] = lambda session=session, feed=feed: session.run(None, feed)[0]
    results = interleaved(runs, args.repeat)
    (gather_time, gather_cpu, gather_out), (op_time, op_cpu, op_out) = results["gather"], results["custom-op"]

    print(f"shapes: n={n} h={h} T={t} d={d} bs={bs} sbs={sbs} sf={sf} G={args.globals} "
          f"sparsity={args.sparsity_type}; ORT {ort.__version__}, {args.threads} intra-op threads, "
          f"median of {args.repeat} interleaved rounds, wall and CPU time")
    print(f"gather subgraph : {gather_time * 1e3:8.2f} ms wall {gather_cpu * 1e3:8.2f} ms CPU  "
          f"(max |diff| vs torch {np.abs(gather_out - expected).max():.2e})")
    print(f"custom op       : {op_time * 1e3:8.2f} ms wall {op_cpu * 1e3:8.2f} ms CPU  "
          f"(max |diff| vs torch {np.abs(op_out - expected).max():.2e})")
    print(f"speed-up        : {gather_time / op_time:.2f}x wall, {gather_cpu / op_cpu:.2f}x CPU (target >= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
