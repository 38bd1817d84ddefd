"""The exports of the deploy and serve tests, each built once per pytest session (the torch export is the
slow part) under the session's base temp folder: a tiny random bert text classifier with a WordPiece
tokenizer, converted to LSG (blocks of 8) and exported at --seq 64 (test_deploy.py, test_serve.py), and the
same bert as an encoder with a sentence-transformers pipeline (mean pooling, Normalize), exported with its
`sentence_embedding` output (test_serve_embeddings.py)."""
import fcntl
from pathlib import Path

SEQ = 64
WORDS = [f"w{i}" for i in range(95)]  # + 5 special tokens = the tiny config's vocabulary of 100


def save_tokenizer(folder):
    from transformers import BertTokenizerFast
    vocab = Path(folder) / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True).save_pretrained(folder)


def tiny_export(root):
    """Folder of the shared export (built on first use)."""
    from _tiny import save_tiny_checkpoint

    from lsg_export import convert
    from lsg_export.onnx import export_onnx

    root = Path(root)
    out = root / "bert-cls-onnx"
    with open(root / "deploy-export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "export.json").is_file():
            original = save_tiny_checkpoint("bert", root / "original-bert")
            save_tokenizer(original)
            convert(str(original), root / "lsg-bert-cls", max_sequence_length=SEQ,
                    architecture="BertForSequenceClassification", block_size=8, sparse_block_size=8, force=True)
            result = export_onnx(root / "lsg-bert-cls", out, seq=SEQ, lengths=[1, 9, SEQ], force=True)
            assert result.passed, result.report.failure_message()
    return out


def embedding_export(root):
    """Folder of the sentence-embedding export (built on first use)."""
    from _onnx_cases import write_sentence_pipeline
    from _tiny import save_tiny_checkpoint

    from lsg_export import convert
    from lsg_export.onnx import export_onnx

    root = Path(root)
    out = root / "bert-embedding-onnx"
    with open(root / "deploy-embedding.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "export.json").is_file():
            original = save_tiny_checkpoint("bert", root / "original-bert-sentence")
            save_tokenizer(original)
            write_sentence_pipeline(original, "mean", normalize=True)
            convert(str(original), root / "lsg-bert-sentence", max_sequence_length=SEQ, architecture="BertModel",
                    block_size=8, sparse_block_size=8, force=True)
            result = export_onnx(root / "lsg-bert-sentence", out, seq=SEQ, lengths=[1, 9, SEQ], force=True)
            assert result.passed, result.report.failure_message()
    return out


def texts(count, seed=0):
    """Random sentences of the tiny vocabulary, 1..~40 words."""
    import random
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(count)]
