"""The global tokens' initialisation from the checkpoint's special tokens (issue 19): a tokenizer
without mask/bos token converts with --random-global-init, and a special-token id outside the word
embedding table is one user error, not an IndexError."""
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from conftest import TINY_BLOCK_SIZE, TINY_VOCAB, tiny_config
from lsg_export.cli import main

SMALL = ["--block-size", str(TINY_BLOCK_SIZE), "--sparse-block-size", str(TINY_BLOCK_SIZE)]


def invoke(*args):
    return CliRunner().invoke(main, ["convert", *map(str, args)])


def save_word_tokenizer(folder, size=TINY_VOCAB):
    """A whitespace tokenizer of `size` words with only <unk> (0) and <pad> (1): no bos, cls or mask token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<pad>": 1, **{f"w{i}": i for i in range(2, size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>").save_pretrained(folder)
    return folder


def drop_config_keys(folder, *keys):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in keys}))


def assert_one_error_line(result, *fragments):
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- 1. no mask/bos token: --random-global-init --------------------------------------------------------

@pytest.fixture
def bert_without_special_tokens(tmp_path):
    """A tiny bert with 512 positions (so that the globals' positions are rows of the table, no padding
    draws), word embeddings of mean 3, per-dimension std 0.1..2 and dimensions 0 and 1 correlated
    (so a fitted normal is told apart from any other draw), a tokenizer with no bos/cls/mask token and
    a config naming none. Returns (folder, word embeddings, position table, token type 0)."""
    from transformers import BertForPreTraining
    config = tiny_config("bert")
    config.max_position_embeddings = 512
    torch.manual_seed(0)
    model = BertForPreTraining(config).eval()
    noise = torch.randn(TINY_VOCAB, 32)
    noise[:, 1] = 0.95 * noise[:, 0] + 0.05 ** 0.5 * noise[:, 1]
    word = 3.0 + noise * torch.linspace(0.1, 2.0, 32)
    model.bert.embeddings.word_embeddings.weight.data.copy_(word)
    folder = tmp_path / "bert-no-special-tokens"
    model.save_pretrained(folder)
    save_word_tokenizer(folder)
    drop_config_keys(folder, "mask_token_id", "cls_token_id", "bos_token_id")
    embeddings = model.bert.embeddings
    return (folder, word, embeddings.position_embeddings.weight.detach().clone(),
            embeddings.token_type_embeddings.weight.detach()[0].clone())


def test_no_special_tokens_needs_random_global_init(bert_without_special_tokens, tmp_path):
    folder = bert_without_special_tokens[0]
    result = invoke(folder, "-o", tmp_path / "out", *SMALL, "--max-sequence-length", 1024)
    assert_one_error_line(result, "bos/cls and mask token id", "--random-global-init")
    assert not (tmp_path / "out").exists()


def test_random_global_init_without_special_tokens(bert_without_special_tokens, tmp_path):
    folder, word, positions, token_type = bert_without_special_tokens
    out = tmp_path / "out"
    result = invoke(folder, "-o", out, *SMALL, "--max-sequence-length", 1024, "--random-global-init")
    assert result.exit_code == 0, result.output
    assert (out / "tokenizer.json").is_file()  # the tokenizer was read (and had no special token), not absent
    glob = load_file(str(out / "model.safetensors"))["bert.embeddings.global_embeddings.weight"].double()
    # global k has position row (k mod 8) * 64 + k // 8 (stride 64 over 512 rows) and token type 0
    k = torch.arange(512)
    draws = glob - positions.double()[(k % 8) * 64 + k // 8] - token_type.double()
    word = word.double()
    # every global, the first one too (there is no bos), is a draw of the normal fitted to the words
    assert ((draws.mean(0) - word.mean(0)).abs() < 5 * word.std(0) / 512 ** 0.5).all()
    ratio = draws.std(0) / word.std(0)
    assert ratio.min() > 0.8 and ratio.max() < 1.25, ratio
    assert torch.corrcoef(draws[:, :2].T)[0, 1] > 0.85  # the covariance, not only the variances


# --- 2. a special-token id outside the word embedding table -----------------------------------------

def save_bpe_tokenizer(folder, tokenizer_class):
    """A byte-level BPE tokenizer (bart / roberta) of TINY_VOCAB + 1 tokens whose <mask> is the last,
    id TINY_VOCAB == vocab_size: one past the word table, as in distilled BART checkpoints."""
    words = ["<s>", "<pad>", "</s>", "<unk>", *(f"t{i}" for i in range(4, TINY_VOCAB)), "<mask>"]
    (folder / "vocab.json").write_text(json.dumps({word: i for i, word in enumerate(words)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = tokenizer_class(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
    assert tokenizer.mask_token_id == TINY_VOCAB
    tokenizer.save_pretrained(folder)


@pytest.mark.parametrize("model_type, tokenizer_class", [("bart", "BartTokenizerFast"),
                                                        ("roberta", "RobertaTokenizerFast")])
def test_mask_id_outside_the_table(tiny_checkpoint, tmp_path, model_type, tokenizer_class):
    import shutil

    import transformers
    source = shutil.copytree(tiny_checkpoint(model_type), tmp_path / f"tiny-{model_type}")
    save_bpe_tokenizer(source, getattr(transformers, tokenizer_class))
    workspace = tmp_path / "workspace"
    result = invoke(source, "-o", workspace / "out", *SMALL, "--max-sequence-length", 128)
    assert_one_error_line(result, f"tokenizer's mask token id {TINY_VOCAB} is outside the word embedding table "
                                  f"({TINY_VOCAB} rows", "--random-global-init")
    assert "Traceback" not in result.output and not workspace.exists()  # nothing written, not even the parent

    result = invoke(source, "-o", workspace / "out", *SMALL, "--max-sequence-length", 128, "--random-global-init")
    assert result.exit_code == 0, result.output  # the way out the error names works
    assert json.loads((workspace / "out" / "tokenizer_config.json").read_text())["model_max_length"] == 128


def test_bos_id_outside_the_table(tiny_bert, tmp_path):
    """A bos/cls id past the table (from the config here) is an error with or without --random-global-init,
    which starts global 0 from it."""
    import shutil
    source = shutil.copytree(tiny_bert, tmp_path / "tiny-bert")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "cls_token_id": TINY_VOCAB + 5}))
    for extra in ([], ["--random-global-init"]):
        result = invoke(source, "-o", tmp_path / "out", *SMALL, "--max-sequence-length", 128, *extra)
        assert_one_error_line(result, f"config's cls token id {TINY_VOCAB + 5} is outside", f"({TINY_VOCAB} rows",
                              "fix the checkpoint's special tokens")
        assert not (tmp_path / "out").exists()
