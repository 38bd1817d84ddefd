"""LSG (Local-Sparse-Global) attention: the single implementation that every path uses.

Shapes: q, k, v are (batch, heads, G + T, head_dim) with the G global tokens first and T a
multiple of block_size; `key_mask` is additive, (batch, T), 0 for a visible key and the dtype's
finfo.min for a masked one (globals are never masked).

Export-friendly by construction: only reshape / pad / cat / gather / matmul / softmax / topk,
no unfold or as_strided, and no Python branch on the sequence length or on tensor values, so a
traced graph is valid for every batch size and length.

This file imports only torch: it is copied next to every converted model.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

SPARSITY_TYPES = ("none", "norm", "pooling", "lsh", "stride", "block_stride", "bos_pooling")
DENSE_BLOCKS = 2  # up to this many blocks of tokens, LSG attention is dense attention (dense_attend)
LSH_SEED = 0  # the reference draws new projections on every call; a fixed seed makes lsh reproducible


def validate_lsg_options(block_size, sparse_block_size, sparsity_factor, sparsity_type, num_global_tokens):
    """Raise ValueError naming the first invalid option. Returns the normalised sparsity type."""
    sparsity_type = "none" if sparsity_type in (None, "none", "None") else sparsity_type
    if sparsity_type not in SPARSITY_TYPES:
        raise ValueError(f"unknown sparsity_type {sparsity_type!r}; accepted: {', '.join(SPARSITY_TYPES)}")
    for name, value, low in (("block_size", block_size, 1), ("sparsity_factor", sparsity_factor, 1),
                             ("sparse_block_size", sparse_block_size, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(num_global_tokens, int) or not 1 <= num_global_tokens <= 512:
        raise ValueError(f"num_global_tokens must be in 1..512, got {num_global_tokens!r}")
    if block_size % sparsity_factor:
        raise ValueError(f"block_size ({block_size}) must be a multiple of sparsity_factor ({sparsity_factor})")
    if sparsity_factor > 1 and (block_size // sparsity_factor) % 2:
        # the reference crashes or lets the compressed windows overlap the local window here
        raise ValueError(f"block_size / sparsity_factor must be even, got {block_size}/{sparsity_factor}"
                         f" = {block_size // sparsity_factor}")
    if sparsity_type in ("norm", "lsh") and sparse_block_size and sparsity_factor > 1:
        chunk = min(block_size, sparse_block_size)
        if block_size % chunk or chunk % sparsity_factor:
            raise ValueError(f"sparsity_type {sparsity_type!r} works on chunks of min(block_size, sparse_block_size)"
                             f" = {chunk} tokens: it must divide block_size ({block_size}) and be a multiple of "
                             f"sparsity_factor ({sparsity_factor})")
    if sparsity_type == "lsh" and sparse_block_size:
        # each round hashes into `buckets` buckets with buckets/2 projections (x and -x): an even count
        chunk = min(block_size, sparse_block_size)
        if chunk % 2 or (chunk // sparsity_factor) % 2:
            raise ValueError(f"sparsity_type 'lsh' hashes chunks of min(block_size, sparse_block_size) = {chunk} "
                             f"tokens into {chunk // sparsity_factor} buckets: both must be even")
    return sparsity_type


def attend(q, k, v, mask, dropout=None):
    """softmax(q k^T / sqrt(d) + mask) v, in the inputs' dtype.

    q is scaled before the product: (T, d) multiplications instead of (T, keys)."""
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2) + mask
    probs = torch.softmax(scores, dim=-1)
    if dropout is not None:
        probs = dropout(probs)
    return probs @ v


def local_windows(x, block_size, pad_value):
    """(n, h, T, d) -> (n, h, T/bs, 3*bs, d): previous, own and next block of every block."""
    n, h, _, d = x.shape
    x = F.pad(x, (0, 0, block_size, block_size), value=pad_value).reshape(n, h, -1, block_size, d)
    return torch.cat([x[:, :, :-2], x[:, :, 1:-1], x[:, :, 2:]], dim=3)


def sparse_window_index(num_blocks, block_size, sparse_block_size, sparsity_factor, device):
    """Compressed positions seen by each block, shifted by the left padding of `sparse_windows`.

    Block i sees [(i-1)c - sbs, (i-1)c) and [(i+2)c, (i+2)c + sbs) with c = bs/sf: the sbs
    compressed tokens just left and just right of its local window."""
    c, sbs = block_size // sparsity_factor, sparse_block_size
    blocks = torch.arange(num_blocks, device=device).unsqueeze(1)
    j = torch.arange(sbs, device=device).unsqueeze(0)
    index = torch.cat([(blocks - 1) * c - sbs + j, (blocks + 2) * c + j], dim=1)
    return index + (sbs + c)


def sparse_windows(x, index, block_size, sparse_block_size, sparsity_factor, pad_value):
    """(n, h, T/sf, d) -> (n, h, T/bs, 2*sbs, d); positions outside the sequence read `pad_value`."""
    n, h, _, d = x.shape
    c, sbs = block_size // sparsity_factor, sparse_block_size
    x = F.pad(x, (0, 0, sbs + c, sbs + 2 * c), value=pad_value)
    return x.index_select(2, index.reshape(-1)).reshape(n, h, index.shape[0], 2 * sbs, d)


def block_attention(q, k, v, key_mask, global_k, global_v, sparse_k, sparse_v, sparse_mask,
                    block_size, sparse_block_size, sparsity_factor, dropout=None, product=attend):
    """Attention of every block of bs queries to [G globals; 2*sbs compressed; 3*bs local] keys.

    q, k, v: (n, h, T, d); key_mask: (n, 1, T, 1) additive; global_k/v: (n, h, G, d);
    sparse_k/v: (n, h, T/sf, d) or None; sparse_mask: (n, 1 or h, T/sf, 1). Returns (n, h, T, d).
    product: `attend` on the (n, h, blocks, ...) windows (an exporter may give another spelling of it).
    This is the part the custom ONNX Runtime op replaces."""
    n, h, t, d = q.shape
    q = q.reshape(n, h, -1, block_size, d)
    num_blocks = q.shape[2]
    minimum = torch.finfo(key_mask.dtype).min

    keys = [global_k.unsqueeze(2).expand(-1, -1, num_blocks, -1, -1)]
    values = [global_v.unsqueeze(2).expand(-1, -1, num_blocks, -1, -1)]
    masks = [key_mask.new_zeros(n, 1, num_blocks, global_k.shape[2], 1).expand(-1, h, -1, -1, -1)]
    if sparse_k is not None:
        index = sparse_window_index(num_blocks, block_size, sparse_block_size, sparsity_factor, q.device)
        window = lambda x, pad: sparse_windows(x, index, block_size, sparse_block_size, sparsity_factor, pad)
        keys.append(window(sparse_k, 0.0))
        values.append(window(sparse_v, 0.0))
        masks.append(window(sparse_mask, minimum).expand(-1, h, -1, -1, -1))
    keys.append(local_windows(k, block_size, 0.0))
    values.append(local_windows(v, block_size, 0.0))
    masks.append(local_windows(key_mask, block_size, minimum).expand(-1, h, -1, -1, -1))

    mask = torch.cat(masks, dim=3).transpose(-1, -2)
    out = product(q, torch.cat(keys, dim=3), torch.cat(values, dim=3), mask, dropout)
    return out.reshape(n, h, t, d)


def split_heads(x, heads):
    """(n, t, h * d) -> (n, h, t, d)"""
    n, t, _ = x.shape
    return x.reshape(n, t, heads, -1).transpose(1, 2)


def merge_heads(x):
    """(n, h, t, d) -> (n, t, h * d)"""
    n, h, t, d = x.shape
    return x.transpose(1, 2).reshape(n, t, h * d)


def lsg_attend(q, k, v, key_mask, sparse_k, sparse_v, sparse_mask, num_global, block_size, sparse_block_size,
               sparsity_factor, block_attention=block_attention, dropout=None):
    """LSG attention of G global + T tokens once the compressed keys are known (None: none).

    q, k, v: (n, h, G + T, d), the globals first; key_mask: (n, T) additive. Global queries attend to
    every key (k and v as they come: no copy; globals never masked), block i of the other queries to
    the globals, the 2*sbs compressed tokens around its local window and its 3 local blocks
    (`block_attention`). Returns (n, h, G + T, d). This is the part the LSGAttention op replaces."""
    g = num_global
    full_mask = F.pad(key_mask, (g, 0))[:, None, None, :]
    global_out = attend(q[:, :, :g], k, v, full_mask, dropout)
    out = block_attention(q[:, :, g:], k[:, :, g:], v[:, :, g:], key_mask[:, None, :, None], k[:, :, :g], v[:, :, :g],
                          sparse_k, sparse_v, sparse_mask, block_size, sparse_block_size, sparsity_factor, dropout)
    return torch.cat([global_out, out], dim=2)


def dense_attend(q, k, v, key_mask, num_global, dropout=None):
    """lsg_attend of at most DENSE_BLOCKS blocks of tokens, computed without padding them to whole blocks.

    There every block's local window (previous, own and next block) holds every token, and its compressed
    windows only positions past the ends of the sequence (masked): each query attends to the globals and
    every token, which is dense attention. Wrong for longer sequences. key_mask: (n, T) additive, T any."""
    return attend(q, k, v, F.pad(key_mask, (num_global, 0))[:, None, None, :], dropout)


def norm_top_positions(norms, chunk, sparsity_factor):
    """norms (n, h, T) -> (n, h, T/sf) positions: per chunk of m tokens and per head the m/sf of largest
    norm, in increasing norm order as the reference's argsort leaves them."""
    n, h, t = norms.shape
    top = norms.reshape(n, h, -1, chunk).topk(chunk // sparsity_factor, dim=-1).indices.flip(-1)
    offsets = torch.arange(top.shape[2], device=norms.device).reshape(1, 1, -1, 1) * chunk
    return (top + offsets).reshape(n, h, -1)


def _take_head_slot(x, heads, sparsity_factor):
    """x: (n, h or 1, A, sf, B) -> (n, h, A, B), head j keeping slot j mod sf."""
    n, _, a, sf, b = x.shape
    slot = (torch.arange(heads, device=x.device) % sparsity_factor).reshape(1, heads, 1, 1, 1)
    x = x.expand(n, heads, a, sf, b)
    return x.gather(3, slot.expand(n, heads, a, 1, b)).squeeze(3)


class LSGAttention(nn.Module):
    """Softmax attention of G global + T tokens with the LSG pattern; no parameters.

    Global queries attend to every key; block i of the other queries attends to the globals, the
    2*sbs compressed tokens around its local window and its 3 local blocks."""

    def __init__(self, config, dropout_prob=0.0):
        super().__init__()
        self.block_size = config.block_size
        self.sparse_block_size = config.sparse_block_size
        self.sparsity_factor = config.sparsity_factor
        self.sparsity_type = validate_lsg_options(
            config.block_size, config.sparse_block_size, config.sparsity_factor,
            config.sparsity_type, config.num_global_tokens)
        self.num_global_tokens = config.num_global_tokens
        self.lsh_num_pre_rounds = getattr(config, "lsh_num_pre_rounds", 1)
        self.dropout = nn.Dropout(dropout_prob)
        self.config = config  # its `dense_attention` (lsg_base.use_dense_attention) is read at run time
        self.block_attention = block_attention  # an exporter may swap in the custom op
        self.select_positions = norm_top_positions  # a validation may swap in a recording / swapping selection
        self._lsh_projections = {}
        # an exporter may set `forward_tokens` on the instance (the LSGAttention op)

    @property
    def uses_sparse(self):
        return self.sparsity_type != "none" and self.sparse_block_size > 0

    def forward(self, q, k, v, key_mask):
        """q, k, v: (n, h, G + T, d), globals first; key_mask: (n, T) additive. Returns (n, h, G + T, d)."""
        g = self.num_global_tokens
        if getattr(self.config, "dense_attention", False):
            return dense_attend(q, k, v, key_mask, g, self.dropout if self.training else None)
        sparse = (None, None, None)
        if self.uses_sparse:
            sparse = self.compress(q[:, :, g:], k[:, :, g:], v[:, :, g:], key_mask[:, None, :, None])
        return lsg_attend(q, k, v, key_mask, *sparse, g, self.block_size, self.sparse_block_size,
                          self.sparsity_factor, self.block_attention, self.dropout if self.training else None)

    def forward_tokens(self, q, k, v, key_mask, heads):
        """forward() in the projections' layout: q, k, v (n, G + T, h * d) -> (n, G + T, h * d)."""
        return merge_heads(self(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), key_mask))

    def compress_tokens(self, q, k, v, key_mask, heads):
        """compress() of forward_tokens' inputs: (n, h, T/sf, d) keys and values, (n, 1 or h, T/sf, 1) mask.

        The norm compression gathers its rows straight from (n, G + T, h * d): no per-head copy of k, v."""
        g = self.num_global_tokens
        if self.sparsity_type == "norm" and self.sparsity_factor > 1:
            return self._compress_norm_tokens(k, v, key_mask, heads)
        split = lambda x: split_heads(x, heads)[:, :, g:]  # noqa: E731
        return self.compress(split(q), split(k), split(v), key_mask[:, None, :, None])

    # --- compression: T tokens -> T/sf tokens with an additive mask (n, 1 or h, T/sf, 1) ---

    def compress(self, q, k, v, key_mask):
        if self.sparsity_factor == 1:
            return k, v, key_mask
        return getattr(self, "_compress_" + self.sparsity_type)(q, k, v, key_mask)

    def _compress_norm(self, q, k, v, key_mask):
        # per chunk of m tokens and per head keep the m/sf keys of largest L2 norm (masked keys: 0)
        n, h, t, d = k.shape
        with torch.no_grad():
            norms = k.detach().norm(dim=-1) * (key_mask[..., 0] == 0)
            index = self.select_positions(norms, min(self.block_size, self.sparse_block_size), self.sparsity_factor)
            # whole rows by one index into (n*h*t, d): a row copy per key in the graph (Gather),
            # where gather along dim 2 reads an index per element (GatherElements)
            rows = (index + torch.arange(n * h, device=k.device).reshape(n, h, 1) * t).reshape(-1)
        take = lambda x: x.reshape(-1, x.shape[-1]).index_select(0, rows).reshape(n, h, -1, x.shape[-1])  # noqa: E731
        return take(k), take(v), take(key_mask.expand(n, h, t, 1))

    def _compress_norm_tokens(self, k, v, key_mask, heads):
        # _compress_norm on (n, G + T, h * d) keys and values: the same norms and positions, rows
        # gathered from (n * (G + T) * h, d)
        g, (n, t) = self.num_global_tokens, key_mask.shape
        d = k.shape[-1] // heads
        with torch.no_grad():
            norms = k.detach().reshape(n, -1, heads, d).norm(dim=-1)[:, g:].transpose(1, 2)
            norms = norms * (key_mask == 0)[:, None, :]
            index = self.select_positions(norms, min(self.block_size, self.sparse_block_size), self.sparsity_factor)
            batch = torch.arange(n, device=k.device).reshape(n, 1, 1)
            rows = ((batch * (g + t) + g + index) * heads + torch.arange(heads, device=k.device).reshape(1, heads, 1))
            mask_rows = (batch * t + index).reshape(-1)
        take = lambda x: x.reshape(-1, d).index_select(0, rows.reshape(-1)).reshape(n, heads, -1, d)  # noqa: E731
        return take(k), take(v), key_mask.reshape(-1).index_select(0, mask_rows).reshape(n, heads, -1, 1)

    def _compress_pooling(self, q, k, v, key_mask):
        # masked mean of each group of sf consecutive tokens; a group of padding only is masked
        n, h, t, d = k.shape
        sf = self.sparsity_factor
        keep = (key_mask == 0).to(k.dtype).reshape(n, 1, -1, sf, 1)
        count = keep.sum(3)
        k = (k.reshape(n, h, -1, sf, d) * keep).sum(3) / (count + 1e-6)
        v = (v.reshape(n, h, -1, sf, d) * keep).sum(3) / (count + 1e-6)
        return k, v, self._group_mask(count, key_mask.dtype)

    def _compress_stride(self, q, k, v, key_mask):
        # head j takes tokens i*sf + (j mod sf)
        n, h, t, d = k.shape
        sf = self.sparsity_factor
        take = lambda x: _take_head_slot(x.reshape(n, x.shape[1], -1, sf, x.shape[-1]), h, sf)
        return take(k), take(v), take(key_mask)

    def _compress_block_stride(self, q, k, v, key_mask):
        # in each block, head j takes the bs/sf contiguous tokens starting at (j*bs/sf) mod bs
        n, h, t, d = k.shape
        sf, c = self.sparsity_factor, self.block_size // self.sparsity_factor
        take = lambda x: _take_head_slot(
            x.reshape(n, x.shape[1], -1, sf, c * x.shape[-1]), h, sf).reshape(n, h, -1, x.shape[-1])
        return take(k), take(v), take(key_mask)

    def _compress_bos_pooling(self, q, k, v, key_mask):
        # each group of sf tokens weighted by softmax(first token's query . key / sqrt(d) + mask)
        n, h, t, d = k.shape
        sf = self.sparsity_factor
        k, v = k.reshape(n, h, -1, sf, d), v.reshape(n, h, -1, sf, d)
        group_mask = key_mask.reshape(n, 1, -1, 1, sf)
        scores = q[:, :, :1, None, :] @ k.transpose(-1, -2) / math.sqrt(d) + group_mask
        # in float16 a masked score below finfo.min overflows to -inf: a group of padding only then
        # got NaN weights, and its NaN key poisoned every block that sees it (masked or not)
        scores = scores.clamp(min=torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        count = (group_mask == 0).to(k.dtype).sum(-1)
        # mended: the reference's mean of two finfo.min overflows to -inf and unmasks padding groups
        return (weights @ k).squeeze(3), (weights @ v).squeeze(3), self._group_mask(count, key_mask.dtype)

    def _compress_lsh(self, q, k, v, key_mask):
        # random-projection buckets per chunk of m tokens; bucket centroids become the tokens
        n, h, t, d = k.shape
        m = min(self.block_size, self.sparse_block_size)
        keep = (key_mask == 0).to(k.dtype).reshape(n, 1, -1, m, 1)
        k, v = k.reshape(n, h, -1, m, d) * keep, v.reshape(n, h, -1, m, d) * keep
        count = keep.expand(n, h, -1, -1, -1)
        projections = self._lsh_projection_set(h, d, m, k.device, k.dtype)
        for size, projection in projections:
            k, v, count = self._lsh_round(k, v, count, size, projection)
        # the reference divides by count + 1e-8, which underflows to 0 in float16 (0/0 = NaN)
        divisor = torch.where(count > 0, count, torch.ones_like(count))
        k, v = k / divisor, v / divisor
        mask = self._group_mask(count, key_mask.dtype)
        return k.reshape(n, h, -1, d), v.reshape(n, h, -1, d), mask.reshape(n, h, -1, 1)

    @staticmethod
    def _lsh_round(k, v, count, size, projection):
        with torch.no_grad():
            x = F.normalize(k, dim=-1) * count.clamp(0, 1)
            x = x @ projection
            bucket = torch.cat([x, -x], dim=-1).argmax(dim=-1, keepdim=True)
            one_hot = (bucket == torch.arange(size, device=k.device)).to(k.dtype).transpose(-1, -2)
        return one_hot @ k, one_hot @ v, one_hot @ count

    def _lsh_projection_set(self, heads, head_dim, chunk, device, dtype):
        """Fixed projections per round: [(buckets, (h, 1, d, buckets//2)), ...]; pre-rounds keep m."""
        key = (heads, head_dim, chunk, str(device), dtype)
        if key not in self._lsh_projections:
            generator = torch.Generator().manual_seed(LSH_SEED)
            sizes = [chunk] * self.lsh_num_pre_rounds + [chunk // self.sparsity_factor]
            self._lsh_projections[key] = [
                (size, torch.randn(heads, 1, head_dim, size // 2, generator=generator)
                 .to(device=device, dtype=dtype)) for size in sizes]
        return self._lsh_projections[key]

    @staticmethod
    def _group_mask(count, dtype):
        # masked_fill, not torch.where on two Python scalars: that makes a float32 tensor, which
        # float64's finfo.min overflows (pooling, bos_pooling and lsh crashed in float64)
        return torch.zeros_like(count, dtype=dtype).masked_fill(count <= 0, torch.finfo(dtype).min)
