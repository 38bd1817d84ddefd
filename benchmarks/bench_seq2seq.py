"""`lsg-export bench` on a random-weight LSG BART of a chosen size: encoder latency and greedy generation
tokens/s on torch-lsg, torch-dense, ort-gather and ort-custom-op (no checkpoint needed).

    python benchmarks/bench_seq2seq.py                       # d_model 256, 4 + 4 layers, vocab 8k, 4096 tokens
    python benchmarks/bench_seq2seq.py --d-model 768 --layers 6 --vocab 50265 --threads 2 --json bart-base.json

The random BART is saved and converted (block 128, norm, 1 global) into --work (default: a temporary
folder); a --work folder that holds them already is reused, with the exports the bench cached in it.
For a real checkpoint: `lsg-export convert` it, then `lsg-export bench` on the converted folder.
"""
import argparse
import tempfile
from pathlib import Path


def random_bart(folder, d_model, layers, vocab):
    import torch
    from transformers import BartConfig, BartForConditionalGeneration
    torch.manual_seed(0)
    config = BartConfig(vocab_size=vocab, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                        encoder_attention_heads=d_model // 64, decoder_attention_heads=d_model // 64,
                        encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model, max_position_embeddings=1024,
                        mask_token_id=4)
    BartForConditionalGeneration(config).eval().save_pretrained(folder)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="folder of the random BART and its conversion (default: a temporary one)")
    parser.add_argument("--length", type=int, default=4096, help="converted length, and the one benchmarked")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4, help="encoder layers, and as many decoder layers")
    parser.add_argument("--vocab", type=int, default=8000)
    args, bench_args = parser.parse_known_args()  # the rest goes to lsg-export bench (--threads, --json, ...)

    from lsg_export import convert
    from lsg_export.cli import main as cli

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-seq2seq-"))
    source, converted = work / "bart", work / f"lsg-bart-{args.length}"
    if not (source / "config.json").is_file():
        random_bart(source, args.d_model, args.layers, args.vocab)
    if not (converted / "config.json").is_file():
        convert(str(source), converted, max_sequence_length=args.length)
    if "--seq" not in bench_args:
        bench_args += ["--seq", str(args.length)]
    cli(["bench", str(converted), *bench_args])


if __name__ == "__main__":
    main()
