"""`lsg-export bench`: an LSG model (converted folder or ONNX export) against PyTorch and the alternatives.

    from lsg_export.bench import run_bench
    result = run_bench("lsg-all-MiniLM-L6-v2-4096", seq=[1024, 4096], backends=["torch-lsg", "ort-gather"])
    result.to_dict()   # every measurement, the environment and a summary

Encoder-decoders (bart, mbart, pegasus) are timed on their encoder and on generation of `new_tokens`
tokens (tokens/s; greedy, or beam search with num_beams), with torch-lsg, torch-dense and the ort-* backends
(gather, optimized, int8, fp16 on CUDA, custom-op).

Modules: backends (how each backend is loaded and run), exports (the ONNX exports the ort-* backends
need, cached), target (what is benchmarked, at which lengths), measure (timing loop, peak memory, one
process per backend), worker_spec (what such a process is asked to do), failures (how a failure is told),
run (run_bench), report (table, JSON, CSV), plot (--plot), cli (the command).
"""
from .backends import BACKENDS
from .run import SCHEMA, BenchResult, run_bench

__all__ = ["run_bench", "BenchResult", "BACKENDS", "SCHEMA"]
