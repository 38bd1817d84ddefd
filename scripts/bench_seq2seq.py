"""Encoder latency and greedy generation speed of an LSG encoder-decoder: PyTorch vs ONNX Runtime.

    python scripts/bench_seq2seq.py                       # a random small BART (d 256, 4+4 layers), 4096 tokens
    python scripts/bench_seq2seq.py --model lsg-bart-base-4096 --length 4096 --new-tokens 32

Without --model a random BART of the given size is saved, converted (block 128, norm, 1 global) and
exported to a temporary folder first. Rounds are interleaved (PyTorch, ONNX Runtime, ...); medians.
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def small_bart(folder, d_model, layers, vocab):
    from transformers import BartConfig, BartForConditionalGeneration
    torch.manual_seed(0)
    config = BartConfig(vocab_size=vocab, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                        encoder_attention_heads=d_model // 64, decoder_attention_heads=d_model // 64,
                        encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model, max_position_embeddings=1024,
                        mask_token_id=4)
    BartForConditionalGeneration(config).eval().save_pretrained(folder)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a converted encoder-decoder folder (default: a random small BART)")
    parser.add_argument("--onnx", help="its export (default: exported here)")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8000)
    args = parser.parse_args()

    import onnxruntime as ort

    from lsg_export import convert
    from lsg_export.onnx import export_onnx
    from lsg_export.onnx.seq2seq import load_model, load_seq2seq_model
    from lsg_export.onnx.tasks import read_model_folder

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-seq2seq-"))
    seconds = {}
    model_path = args.model
    if model_path is None:
        source = small_bart(work / "bart", args.d_model, args.layers, args.vocab)
        start = time.perf_counter()
        model_path = convert(str(source), work / "lsg-bart", max_sequence_length=args.length).path
        seconds["convert"] = time.perf_counter() - start
    onnx_path = args.onnx
    if onnx_path is None:
        start = time.perf_counter()
        result = export_onnx(str(model_path), work / "onnx", seq=args.length,
                             lengths=[1, 129, 257, args.length // 2, args.length])
        seconds["export + validation"] = time.perf_counter() - start
        seconds["export (torch.export + ONNX)"] = result.info["seconds"]["export"]
        onnx_path = result.path
        assert result.passed, result.report.failure_message()

    info = read_model_folder(model_path)
    model = load_model(info, args.length)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    ort_model = load_seq2seq_model(onnx_path, session_options=options)
    ids = torch.randint(5, model.config.vocab_size, (1, args.length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    settings = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, num_beams=1, do_sample=False)

    def encode_torch():
        with torch.inference_mode():
            model.get_encoder()(input_ids=ids, attention_mask=mask)

    def encode_ort():
        ort_model.encoder(input_ids=ids, attention_mask=mask)

    def generate_torch():
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, **settings)

    def generate_ort():
        return ort_model.generate(input_ids=ids, attention_mask=mask, **settings)

    runs = {name: [] for name in ("encoder torch", "encoder ort", "generate torch", "generate ort")}
    functions = dict(zip(runs, (encode_torch, encode_ort, generate_torch, generate_ort)))
    for function in functions.values():  # warm-up
        function()
    for _ in range(args.rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            runs[name].append(time.perf_counter() - start)
    same = torch.equal(generate_torch(), generate_ort())
    median = {name: statistics.median(values) for name, values in runs.items()}
    report = {
        "length": args.length, "new_tokens": args.new_tokens, "threads": args.threads,
        "parameters": sum(p.numel() for p in model.parameters()),
        "encoder_s": {"torch": round(median["encoder torch"], 3), "ort": round(median["encoder ort"], 3),
                      "speed-up": round(median["encoder torch"] / median["encoder ort"], 2)},
        "generate_s": {"torch": round(median["generate torch"], 3), "ort": round(median["generate ort"], 3)},
        "tokens_per_s": {"torch": round(args.new_tokens / median["generate torch"], 1),
                         "ort": round(args.new_tokens / median["generate ort"], 1)},
        # the decoder alone: generate minus its encoder run
        "decode_tokens_per_s": {k: round(args.new_tokens / (median[f"generate {k}"] - median[f"encoder {k}"]), 1)
                                for k in ("torch", "ort")},
        "same_tokens": same, "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
