"""The real all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 12 heads, 512 positions) converted to LSG.

Up to 2 blocks, LSG attention is full attention, so the converted model must reproduce the original
BERT exactly once the global token is accounted for; past that, only its invariants are checked."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import lsg_variant, max_diff

pytestmark = pytest.mark.slow  # the project's marker for the real-MiniLM tests (they run by default)

GPL = Path("/usr/share/common-licenses/GPL-3")
BLOCK = 128  # convert's default block size


@pytest.fixture(scope="module")
def original(minilm_path):
    from transformers import BertModel
    return BertModel.from_pretrained(minilm_path, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def tokenizer(minilm_lsg):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(minilm_lsg.path)  # the converted folder's own tokenizer


@pytest.fixture(scope="module")
def text():
    if not GPL.is_file():
        pytest.skip(f"{GPL} not found")
    return GPL.read_text()


def batch(tokenizer, text, length, padded_length=None, special_tokens=True):
    """2 rows of real text: row 0 has `length` tokens ([CLS] ... [SEP] with special_tokens), row 1
    the first `padded_length` of them followed by padding (row 1 = row 0 when padded_length is None)."""
    ids = tokenizer(text, truncation=True, max_length=length, return_tensors="pt",
                    add_special_tokens=special_tokens)["input_ids"]
    assert ids.shape[1] == length and (ids[0, 0] == tokenizer.cls_token_id) == special_tokens
    ids = ids.repeat(2, 1)
    mask = torch.ones_like(ids)
    if padded_length is not None:
        ids[1, padded_length - 1] = tokenizer.sep_token_id
        ids[1, padded_length:] = tokenizer.pad_token_id
        mask[1, padded_length:] = 0
    return ids, mask


def real_tokens(x, mask):
    """The rows' outputs at their real (unpadded) tokens, as one (tokens, hidden) tensor."""
    return x[mask.bool()]


# (length, real length of the padded row 1 or None): exactly 2 blocks, 2 blocks with internal padding
# to a multiple of the block size, a few tokens
CASES = [(2 * BLOCK, 150), (BLOCK + 1, 40), (9, None)]


@pytest.fixture(scope="module")
def first_token_model(minilm_lsg, tokenizer):
    """mask_first_token, 1 global whose embedding is [CLS]'s input embedding (word + position 0 + type 0)."""
    model = lsg_variant(minilm_lsg.model, mask_first_token=True, num_global_tokens=1)
    embeddings = model.embeddings
    with torch.no_grad():
        embeddings.global_embeddings.weight[0] = (embeddings.word_embeddings.weight[tokenizer.cls_token_id]
                                                  + embeddings.position_embeddings.weight[0]
                                                  + embeddings.token_type_embeddings.weight[0])
    return model


@pytest.mark.parametrize("length, padded_length", CASES)
def test_mask_first_token_equals_original_bert(first_token_model, original, tokenizer, text, length, padded_length):
    """With the first token masked and the global equal to its input embedding, the global plays
    the first token's part: up to 2*bs tokens the LSG model is the original BERT."""
    model = first_token_model
    ids, mask = batch(tokenizer, text, length, padded_length)
    with torch.no_grad():
        expected = original(input_ids=ids, attention_mask=mask)
        actual = model(input_ids=ids, attention_mask=mask)
    assert actual.last_hidden_state.shape == (2, length, 384)
    assert max_diff(real_tokens(actual.last_hidden_state, mask), real_tokens(expected.last_hidden_state, mask)) <= 1e-5
    assert max_diff(actual.pooler_output, expected.pooler_output) <= 1e-5


def original_with_globals(original, global_embeddings, ids, mask):
    """The original encoder on [globals; tokens]: the G global rows join the summed embeddings before
    LayerNorm; then the first global's output takes the first token's place and the globals are cut."""
    embeddings = original.embeddings
    (n, t), g = ids.shape, global_embeddings.shape[0]
    sums = (embeddings.word_embeddings(ids) + embeddings.position_embeddings(torch.arange(t))
            + embeddings.token_type_embeddings(torch.zeros_like(ids)))
    hidden = embeddings.LayerNorm(torch.cat([global_embeddings.expand(n, -1, -1), sums], dim=1))
    full_mask = torch.cat([torch.ones(n, g, dtype=mask.dtype), mask], dim=1)
    extended = original.get_extended_attention_mask(full_mask, full_mask.shape)
    out = original.encoder(hidden, attention_mask=extended).last_hidden_state
    return torch.cat([out[:, :1], out[:, g + 1:]], dim=1)


@pytest.mark.parametrize("length, padded_length, globals_, special_tokens", [
    (2 * BLOCK, 150, 1, True),
    (BLOCK + 1, 40, 3, True),
    (200, 120, 1, False),
    (9, None, 2, False),
])
def test_default_options_equal_original_encoder_with_globals(minilm_lsg, original, tokenizer, text, length,
                                                             padded_length, globals_, special_tokens):
    """Default options (no mask_first_token, pool_with_global) with the converted globals.

    Global 0 is [CLS]'s input embedding (position row 0 + word[CLS] + type 0): with a leading [CLS]
    the first output is the same either way, so some rows start without [CLS] to see pooling."""
    model = minilm_lsg.model
    assert (model.config.mask_first_token, model.config.num_global_tokens, model.config.pool_with_global) == \
        (False, 1, True)
    if globals_ != 1:
        model = lsg_variant(model, num_global_tokens=globals_)
    ids, mask = batch(tokenizer, text, length, padded_length, special_tokens)
    with torch.no_grad():
        expected = original_with_globals(original, model.embeddings.global_embeddings.weight[:globals_], ids, mask)
        actual = model(input_ids=ids, attention_mask=mask).last_hidden_state
        plain = original(input_ids=ids, attention_mask=mask).last_hidden_state
    assert max_diff(real_tokens(actual, mask), real_tokens(expected, mask)) <= 1e-5
    # the global tokens do change the outputs: this is not the plain BERT again
    assert max_diff(real_tokens(actual, mask), real_tokens(plain, mask)) > 1e-3


def test_4096_tokens_of_real_text(minilm_lsg, tokenizer, text):
    assert tokenizer.model_max_length == 4096
    encoded = tokenizer(text, truncation=True, max_length=4096, return_tensors="pt")
    assert encoded["input_ids"].shape == (1, 4096)
    with torch.no_grad():
        out = minilm_lsg.model(**encoded)
    assert out.last_hidden_state.shape == (1, 4096, 384)
    assert torch.isfinite(out.last_hidden_state).all() and torch.isfinite(out.pooler_output).all()
    # far tokens are not all alike (positions were tiled, not left at zero)
    assert out.last_hidden_state[0, 4000:].std(0).mean() > 1e-2


@pytest.mark.parametrize("sparsity_type", ["norm", "pooling", "stride", "block_stride", "bos_pooling", "none"])
@pytest.mark.parametrize("real, extra", [(100, 60), (70, 90)])
def test_appended_padding_changes_nothing(minilm_lsg, tokenizer, text, sparsity_type, real, extra):
    """Extra masked tokens (more blocks, more compressed tokens) leave the real tokens' outputs alone."""
    model = lsg_variant(minilm_lsg.model, block_size=32, sparse_block_size=16, sparsity_type=sparsity_type)
    ids = tokenizer(text, truncation=True, max_length=real, return_tensors="pt")["input_ids"]
    long_ids = torch.cat([ids, torch.full((1, extra), tokenizer.pad_token_id)], dim=1)
    long_mask = torch.cat([torch.ones_like(ids), torch.zeros(1, extra, dtype=ids.dtype)], dim=1)
    with torch.no_grad():
        short = model(input_ids=ids).last_hidden_state
        long = model(input_ids=long_ids, attention_mask=long_mask).last_hidden_state
    assert long.shape == (1, real + extra, 384)
    assert max_diff(long[:, :real], short) <= 1e-5


@pytest.mark.quick
def test_global_embeddings_and_tiled_positions(minilm_lsg, minilm_path):
    """Global k = original position (k mod 8)*64 + k//8 (stride 64 over 512 rows) + word[CLS] for
    global 0, word[MASK] for the others + token_type[0]; the position table is tiled."""
    original = load_file(str(Path(minilm_path) / "model.safetensors"))
    original = {k.removeprefix("bert."): v for k, v in original.items()}
    converted = load_file(str(minilm_lsg.path / "model.safetensors"))
    word = original["embeddings.word_embeddings.weight"]
    positions = original["embeddings.position_embeddings.weight"]
    token_type = original["embeddings.token_type_embeddings.weight"][0]
    cls_id, mask_id = 101, 103  # [CLS] and [MASK] in MiniLM's vocabulary

    glob = converted["embeddings.global_embeddings.weight"]
    assert glob.shape == (512, 384)
    for k in range(512):
        expected = positions[(k % 8) * 64 + k // 8] + word[cls_id if k == 0 else mask_id] + token_type
        assert torch.allclose(glob[k], expected, atol=1e-6), k

    table = converted["embeddings.position_embeddings.weight"]
    assert table.shape == (4096, 384)
    assert torch.equal(table, positions[torch.arange(4096) % 512])

    # every other weight is the original's
    for key, value in original.items():
        if key not in ("embeddings.position_embeddings.weight", "embeddings.position_ids"):
            assert torch.equal(converted[key], value), key


def test_sentence_transformers_encode_is_the_lsg_model_pooled(minilm_lsg, tokenizer, text):
    """The converted folder carries MiniLM's sentence-transformers pipeline (mean pooling, Normalize) with
    max_seq_length 4096: SentenceTransformer's embedding of a long text is the LSG model's last_hidden_state
    averaged over the real tokens and L2-normalised by hand."""
    import json

    from sentence_transformers import SentenceTransformer
    folder = minilm_lsg.path
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 4096
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]
    texts = [text[:30000], text[:9000]]  # ~6.8k and ~2k tokens: the first truncated at 4096, both past 512
    model = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)
    assert model.max_seq_length == 4096
    got = torch.from_numpy(model.encode(texts, batch_size=2))
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=4096, return_tensors="pt")
    assert encoded["input_ids"].shape[1] == 4096 and 512 < int(encoded["attention_mask"][1].sum()) < 4096
    with torch.no_grad():
        hidden = minilm_lsg.model(**encoded).last_hidden_state
    weights = encoded["attention_mask"].unsqueeze(-1).double()
    pooled = (hidden.double() * weights).sum(1) / weights.sum(1)
    expected = pooled / pooled.norm(dim=1, keepdim=True)
    assert got.shape == (2, 384)
    assert max_diff(got, expected) <= 1e-5
    # not a constant: the two documents' embeddings differ
    assert max_diff(got[0], got[1]) > 1e-2
