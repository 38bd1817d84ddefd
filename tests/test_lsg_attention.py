"""LSGAttention against an independent, deliberately naive reference.

The reference below builds, for every query, the explicit list of keys it may see (with Python
loops over positions) and runs a dense softmax over exactly those keys; it computes the compressed
tokens from their definitions and never calls the library's helpers. Masked keys are simply left
out of a query's list, which is what an additive finfo.min mask amounts to."""
import math
from types import SimpleNamespace

import pytest
import torch

from lsg_export.modeling.lsg_attention import SPARSITY_TYPES, LSGAttention, validate_lsg_options
from lsg_export.modeling.lsg_base import dense_limit, use_dense_attention

DETERMINISTIC_TYPES = ("norm", "pooling", "stride", "block_stride", "bos_pooling", "none")
D = 8  # head dim
HEADS = 3  # odd, so that heads cycle over the sf slots of stride / block_stride unevenly


def options(bs, sbs, sf, sparsity_type, g, lsh_num_pre_rounds=1):
    return SimpleNamespace(block_size=bs, sparse_block_size=sbs, sparsity_factor=sf, sparsity_type=sparsity_type,
                           num_global_tokens=g, lsh_num_pre_rounds=lsh_num_pre_rounds)


# --- naive reference ------------------------------------------------------------------------------

def compressed_tokens(sparsity_type, k, v, visible, q_first, bs, sbs, sf, head):
    """The T/sf compressed tokens of one (row, head): list of (key, value, visible).

    k, v: (T, d); visible: list of bools; q_first: the first token's query (bos_pooling)."""
    t, d = k.shape
    if sf == 1:
        return [(k[j], v[j], visible[j]) for j in range(t)]
    tokens = []
    if sparsity_type == "norm":
        m = min(bs, sbs)
        for start in range(0, t, m):
            chunk = range(start, start + m)
            norm = {j: (k[j].norm().item() if visible[j] else 0.0) for j in chunk}
            # the m/sf largest norms, in increasing norm order (the reference's argsort order)
            kept = sorted(chunk, key=lambda j: norm[j])[m - m // sf:]
            tokens += [(k[j], v[j], visible[j]) for j in kept]
    elif sparsity_type == "pooling":
        for start in range(0, t, sf):
            group = [j for j in range(start, start + sf) if visible[j]]
            if group:
                tokens.append((sum(k[j] for j in group) / len(group), sum(v[j] for j in group) / len(group), True))
            else:
                tokens.append((k[start], v[start], False))
    elif sparsity_type == "stride":
        for p in range(t // sf):
            j = p * sf + head % sf
            tokens.append((k[j], v[j], visible[j]))
    elif sparsity_type == "block_stride":
        c = bs // sf
        for p in range(t // sf):
            block, r = divmod(p, c)
            j = block * bs + (head * c) % bs + r
            tokens.append((k[j], v[j], visible[j]))
    elif sparsity_type == "bos_pooling":
        for start in range(0, t, sf):
            group = [j for j in range(start, start + sf) if visible[j]]
            if group:
                scores = torch.stack([q_first @ k[j] / math.sqrt(d) for j in group])
                weights = torch.softmax(scores, dim=0)
                tokens.append((sum(w * k[j] for w, j in zip(weights, group)),
                               sum(w * v[j] for w, j in zip(weights, group)), True))
            else:
                tokens.append((k[start], v[start], False))
    else:
        raise AssertionError(sparsity_type)
    assert len(tokens) == t // sf
    return tokens


def naive_lsg(q, k, v, key_mask, bs, sbs, sf, sparsity_type, g):
    """Returns (output, number of compressed keys some query actually saw)."""
    n, heads, length, d = q.shape
    t = length - g
    out = torch.zeros_like(q)
    compressed_seen = 0
    for row in range(n):
        visible = [key_mask[row, j].item() == 0 for j in range(t)]
        for head in range(heads):
            gk, gv = k[row, head, :g], v[row, head, :g]
            tq, tk, tv = q[row, head, g:], k[row, head, g:], v[row, head, g:]
            use_sparse = sparsity_type != "none" and sbs > 0
            sparse = compressed_tokens(sparsity_type, tk, tv, visible, tq[0], bs, sbs, sf, head) if use_sparse else []
            for pos in range(length):
                keys = [(gk[i], gv[i]) for i in range(g)]  # globals: always visible
                if pos < g:  # a global query sees every visible token
                    keys += [(tk[j], tv[j]) for j in range(t) if visible[j]]
                else:
                    i = (pos - g) // bs
                    local = range((i - 1) * bs, (i + 2) * bs)
                    keys += [(tk[j], tv[j]) for j in local if 0 <= j < t and visible[j]]
                    c = bs // sf
                    windows = list(range((i - 1) * c - sbs, (i - 1) * c)) + list(range((i + 2) * c, (i + 2) * c + sbs))
                    seen = [sparse[p] for p in windows if 0 <= p < len(sparse) and sparse[p][2]] if use_sparse else []
                    compressed_seen += len(seen)
                    keys += [(key, value) for key, value, _ in seen]
                key_matrix = torch.stack([key for key, _ in keys])
                value_matrix = torch.stack([value for _, value in keys])
                probs = torch.softmax(key_matrix @ q[row, head, pos] / math.sqrt(d), dim=0)
                out[row, head, pos] = probs @ value_matrix
    return out, compressed_seen


# --- inputs ---------------------------------------------------------------------------------------

def random_qkv(n, g, t, dtype=torch.float64, seed=0, heads=HEADS):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, heads, g + t, D, generator=generator, dtype=torch.float64).to(dtype) for _ in range(3)]


def additive_mask(visible, dtype):
    return torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)


def padding_mask(t, real_lengths, dtype, mask_first_token=False, holes=()):
    """Row r sees its first real_lengths[r] tokens; `holes` masks extra (row, position) keys."""
    visible = torch.arange(t).unsqueeze(0) < torch.tensor(real_lengths).unsqueeze(1)
    for row, position in holes:
        visible[row, position] = False
    if mask_first_token:  # what lsg_encode does with mask_first_token: key 0 masked
        visible[:, 0] = False
    return additive_mask(visible, dtype)


# (bs, sbs, sf, T, real lengths of the two rows): 5 to 6 blocks, the second row padded over whole
# blocks so that compressed groups made only of padding occur
SHAPES = [
    (4, 4, 2, 24, (24, 13)),
    (8, 16, 4, 48, (45, 17)),
    (8, 4, 2, 40, (40, 26)),
]


def run_lsg(opts, q, k, v, mask):
    with torch.no_grad():
        return LSGAttention(opts).eval()(q, k, v, mask)


@pytest.mark.quick
@pytest.mark.parametrize("g", [1, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "bs{}-sbs{}-sf{}-T{}".format(*s[:4]))
@pytest.mark.parametrize("sparsity_type", DETERMINISTIC_TYPES)
def test_matches_naive_reference(sparsity_type, shape, g):
    bs, sbs, sf, t, real = shape
    q, k, v = random_qkv(2, g, t, seed=bs + sbs + sf + g)
    mask = padding_mask(t, real, torch.float64, holes=[(0, 5)])
    expected, seen = naive_lsg(q, k, v, mask, bs, sbs, sf, sparsity_type, g)
    actual = run_lsg(options(bs, sbs, sf, sparsity_type, g), q, k, v, mask)
    assert actual.shape == q.shape
    assert (actual - expected).abs().max().item() <= 1e-5
    # the compressed keys really take part (otherwise this would only test the local window)
    assert (seen > 0) == (sparsity_type != "none")


def test_norm_order_within_a_chunk():
    """The kept tokens of a chunk sit in increasing norm order (the reference's argsort order).

    It only shows when sbs is not a multiple of bs/sf: a window edge then cuts through a chunk."""
    bs, sbs, sf, t, g = 8, 10, 2, 48, 1
    q, k, v = random_qkv(2, g, t, seed=21)
    mask = padding_mask(t, (48, 29), torch.float64)
    expected, _ = naive_lsg(q, k, v, mask, bs, sbs, sf, "norm", g)
    actual = run_lsg(options(bs, sbs, sf, "norm", g), q, k, v, mask)
    assert (actual - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("sparsity_type", DETERMINISTIC_TYPES)
def test_mask_first_token_float32(sparsity_type):
    """mask_first_token reaches the attention as a masked key 0; float32 this time."""
    bs, sbs, sf, t = 8, 8, 2, 48
    q, k, v = random_qkv(2, 2, t, dtype=torch.float32, seed=3)
    mask = padding_mask(t, (48, 30), torch.float32, mask_first_token=True)
    expected, _ = naive_lsg(q.double(), k.double(), v.double(), mask.double(), bs, sbs, sf, sparsity_type, 2)
    actual = run_lsg(options(bs, sbs, sf, sparsity_type, 2), q, k, v, mask)
    assert (actual.double() - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("sparsity_type", ["norm", "pooling", "stride"])
def test_sparse_block_size_zero_means_no_compressed_keys(sparsity_type):
    bs, t, g = 4, 24, 1
    q, k, v = random_qkv(2, g, t, seed=11)
    mask = padding_mask(t, (24, 10), torch.float64)
    actual = run_lsg(options(bs, 0, 2, sparsity_type, g), q, k, v, mask)
    expected, seen = naive_lsg(q, k, v, mask, bs, 0, 2, "none", g)
    assert seen == 0
    assert (actual - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("sparsity_type", ["pooling", "norm", "bos_pooling"])
def test_sparsity_factor_one_keeps_every_token(sparsity_type):
    bs, sbs, t, g = 4, 4, 24, 1
    q, k, v = random_qkv(2, g, t, seed=5)
    mask = padding_mask(t, (24, 9), torch.float64)
    actual = run_lsg(options(bs, sbs, 1, sparsity_type, g), q, k, v, mask)
    expected, seen = naive_lsg(q, k, v, mask, bs, sbs, 1, sparsity_type, g)
    assert seen > 0
    assert (actual - expected).abs().max().item() <= 1e-5


def dense_attention(q, k, v, key_mask, g):
    """Plain softmax attention of every query over all G + T keys (globals never masked)."""
    mask = torch.cat([torch.zeros(key_mask.shape[0], g, dtype=key_mask.dtype), key_mask], 1)[:, None, None, :]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask
    return torch.softmax(scores, -1) @ v


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
@pytest.mark.parametrize("t", [4, 8])
def test_up_to_two_blocks_is_full_attention(sparsity_type, t):
    """With T <= 2*bs every block sees every token and no compressed position is in range."""
    bs, g = 4, 3
    q, k, v = random_qkv(2, g, t, seed=t)
    mask = padding_mask(t, (t, t - 3), torch.float64, mask_first_token=True)
    actual = run_lsg(options(bs, 4, 2, sparsity_type, g), q, k, v, mask)
    assert (actual - dense_attention(q, k, v, mask, g)).abs().max().item() <= 1e-10


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
@pytest.mark.parametrize("t", [1, 3, 4, 6, 8])
def test_dense_attention_on_unpadded_tokens_is_lsg_up_to_two_blocks(sparsity_type, t):
    """use_dense_attention's path on the t tokens alone equals LSG attention on them padded to whole blocks."""
    bs, g = 4, 3
    padded = -(-t // bs) * bs
    q, k, v = random_qkv(2, g, padded, seed=t)
    mask = padding_mask(padded, (t, max(1, t - 2)), torch.float64, mask_first_token=t > 1)
    lsg = run_lsg(options(bs, 4, 2, sparsity_type, g), q, k, v, mask)[:, :, :g + t]
    dense_options = options(bs, 4, 2, sparsity_type, g)
    use_dense_attention(dense_options)
    assert t <= dense_limit(dense_options)
    dense = run_lsg(dense_options, *(x[:, :, :g + t] for x in (q, k, v)), mask[:, :t])
    assert (dense - lsg).abs().max().item() <= 1e-12


def test_longer_inputs_differ_from_full_attention():
    """Past 2 blocks the pattern is sparse: the naive comparison above is not dense attention in disguise."""
    bs, t, g = 4, 24, 1
    q, k, v = random_qkv(1, g, t, seed=2)
    mask = padding_mask(t, (t,), torch.float64)
    actual = run_lsg(options(bs, 4, 2, "norm", g), q, k, v, mask)
    assert (actual - dense_attention(q, k, v, mask, g)).abs().max().item() > 1e-2
    # but the global queries are dense
    assert (actual[:, :, :g] - dense_attention(q, k, v, mask, g)[:, :, :g]).abs().max().item() <= 1e-10


def test_lsh_runs_and_is_reproducible():
    bs, sbs, sf, t, g = 8, 8, 2, 48, 2
    q, k, v = random_qkv(2, g, t, dtype=torch.float32, seed=9)
    mask = padding_mask(t, (48, 20), torch.float32)
    first = run_lsg(options(bs, sbs, sf, "lsh", g, lsh_num_pre_rounds=2), q, k, v, mask)
    second = run_lsg(options(bs, sbs, sf, "lsh", g, lsh_num_pre_rounds=2), q, k, v, mask)  # a new module
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    # the compressed keys matter: lsh is not the same as no compression
    assert (first - run_lsg(options(bs, sbs, sf, "none", g), q, k, v, mask)).abs().max().item() > 1e-3


def half_precision_case(sparsity_type, dtype, scale):
    """LSGAttention in `dtype` and in float32 on the same inputs (q and k multiplied by `scale`)."""
    bs, sbs, sf, t, g = 8, 8, 2, 48, 2
    q, k, v = random_qkv(2, g, t, dtype=torch.float32, seed=4)
    q, k = q * scale, k * scale
    # row 1: padding over whole blocks (fully masked compressed groups) and a masked first token
    visible = torch.arange(t).unsqueeze(0) < torch.tensor([[t], [19]])
    visible[:, 0] = False
    opts = options(bs, sbs, sf, sparsity_type, g)
    half = run_lsg(opts, q.to(dtype), k.to(dtype), v.to(dtype), additive_mask(visible, dtype))
    full = run_lsg(opts, q, k, v, additive_mask(visible, torch.float32))
    return half, full


@pytest.mark.quick
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
def test_half_precision_forward(sparsity_type, dtype):
    half, full = half_precision_case(sparsity_type, dtype, scale=1.0)
    assert half.dtype == dtype and half.shape == full.shape
    assert torch.isfinite(half).all()
    if sparsity_type not in ("lsh", "norm"):  # their token choice may flip with rounding
        assert (half.float() - full).abs().max().item() <= 0.05


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
def test_half_precision_large_scores(sparsity_type, dtype):
    """Scores of a few tens (common in trained models): finfo.min + score overflows to -inf in float16;
    a group of padding only must still give a finite (masked) compressed token."""
    half, _ = half_precision_case(sparsity_type, dtype, scale=8.0)
    assert torch.isfinite(half).all()


# --- option validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("bs, sbs, sf, sparsity_type, g, message", [
    (6, 4, 4, "norm", 1, "multiple of sparsity_factor"),
    (12, 4, 4, "pooling", 1, "must be even"),  # 12/4 = 3
    (6, 6, 2, "stride", 1, "must be even"),  # 6/2 = 3
    (0, 4, 2, "norm", 1, "block_size"),
    (-8, 4, 2, "norm", 1, "block_size"),
    (8, -1, 2, "norm", 1, "sparse_block_size"),
    (8, 4, 0, "norm", 1, "sparsity_factor"),
    (8, 4, 2, "norm", 0, "num_global_tokens"),
    (8, 4, 2, "norm", 513, "num_global_tokens"),
    (8, 4, 2, "norm", -3, "num_global_tokens"),
    (8, 4, 2, "bogus", 1, "unknown sparsity_type"),
    (8, 4, 2.0, "norm", 1, "sparsity_factor"),
    (8, 4, 4, "lsh", 1, "buckets: both must be even"),  # 4 tokens into 1 bucket: no projection to draw
])
@pytest.mark.quick
def test_validate_rejects(bs, sbs, sf, sparsity_type, g, message):
    with pytest.raises(ValueError, match=message):
        validate_lsg_options(bs, sbs, sf, sparsity_type, g)
    with pytest.raises(ValueError):  # the module validates too
        LSGAttention(options(bs, sbs, sf, sparsity_type, g))


@pytest.mark.parametrize("bs, sbs, sf, sparsity_type, g, expected", [
    (128, 128, 2, "norm", 1, "norm"),
    (8, 0, 4, "pooling", 512, "pooling"),
    (8, 4, 1, None, 1, "none"),
    (8, 4, 2, "None", 7, "none"),
    (6, 6, 1, "stride", 1, "stride"),  # sf 1: bs/sf may be odd
])
def test_validate_accepts(bs, sbs, sf, sparsity_type, g, expected):
    assert validate_lsg_options(bs, sbs, sf, sparsity_type, g) == expected
