"""The `gather` attention kind's block attention: lsg_attention.block_attention, laid out for ONNX.

Same keys in the same order, same masks, same softmax: in eager PyTorch the output is bit-for-bit
that of lsg_attention.block_attention (tests/test_onnx_export.py checks it over sparsity types,
block sizes, factors and global counts). What differs is how the work is laid out, to keep the
graph small and its memory traffic low:

* keys, values and masks of every block ([G globals; 2*sbs compressed; 3*bs local]) are read by one
  Gather from one Concat of [a padding row; globals; compressed tokens; tokens], instead of three
  pads, slices and concatenations of k and v per layer. Positions outside the sequence read the
  padding row: value 0 and mask finfo.min, what the reference pads with. The (blocks, G + 2*sbs +
  3*bs) index is computed in the graph from the block count, so one graph serves every length;
* the additive mask rides in the score MatMul: each key gets the mask as one more coordinate and each
  query a 1 there, so q.k + mask comes out of the MatMul instead of an Add over the whole
  (batch, heads, blocks, bs, keys) score tensor. A visible key adds exactly 0.0; a masked one
  (q.k + finfo.min) / sqrt(d) is, like q.k / sqrt(d) + finfo.min, a softmax weight of exactly 0,
  and the globals, never masked, keep every row finite.
"""
import math

import torch


def window_index(num_blocks, num_global, sparse_tokens, tokens, block_size, sparse_block_size, sparsity_factor,
                 device):
    """(blocks, G [+ 2*sbs] + 3*bs) rows of [pad row; G globals; sparse tokens; tokens] each block reads.

    sparse_tokens: the number of compressed tokens (None without sparse keys). Positions outside the
    sequence point at row 0, the padding row."""
    bs, sbs, c = block_size, sparse_block_size, block_size // sparsity_factor
    blocks = torch.arange(num_blocks, device=device).unsqueeze(1)
    parts = [torch.arange(num_global, device=device).unsqueeze(0).expand(num_blocks, -1) + 1]
    offset = 1 + num_global
    if sparse_tokens is not None:
        # the sbs compressed tokens just left and just right of the local window (lsg_attention.sparse_window_index)
        j = torch.arange(sbs, device=device).unsqueeze(0)
        sparse = torch.cat([(blocks - 1) * c - sbs + j, (blocks + 2) * c + j], dim=1)
        parts.append(torch.where((sparse >= 0) & (sparse < sparse_tokens), sparse + offset, 0))
        offset = offset + sparse_tokens
    local = (blocks - 1) * bs + torch.arange(3 * bs, device=device).unsqueeze(0)
    parts.append(torch.where((local >= 0) & (local < tokens), local + offset, 0))
    return torch.cat(parts, dim=1)


def gather_block_attention(q, k, v, key_mask, global_k, global_v, sparse_k, sparse_v, sparse_mask,
                           block_size, sparse_block_size, sparsity_factor, dropout=None):
    """lsg_attention.block_attention (same arguments, same result), built from one Gather per operand."""
    n, h, t, d = q.shape
    q = q.reshape(n, h, -1, block_size, d)
    num_blocks = q.shape[2]
    g = global_k.shape[2]
    minimum = torch.finfo(key_mask.dtype).min
    use_sparse = sparse_k is not None
    index = window_index(num_blocks, g, sparse_k.shape[2] if use_sparse else None, t, block_size,
                         sparse_block_size, sparsity_factor, q.device).reshape(-1)

    def windows(parts):
        source = torch.cat(parts, dim=2)
        return source.index_select(2, index).reshape(n, h, num_blocks, -1, source.shape[3])

    sparse = lambda x: [x] if use_sparse else []  # noqa: E731
    # one mask per head when the compressed tokens differ by head (stride, block_stride, lsh)
    mask_heads = sparse_mask.shape[1] if use_sparse else 1
    mask = torch.cat([key_mask.new_full((n, mask_heads, 1, 1), minimum), key_mask.new_zeros(n, mask_heads, g, 1),
                      *sparse(sparse_mask), key_mask.expand(n, mask_heads, t, 1)], dim=2)
    keys = torch.cat([k.new_zeros(n, h, 1, d), global_k, *sparse(sparse_k), k], dim=2)
    keys = windows([torch.cat([keys, mask.expand(n, h, -1, 1)], dim=3)])  # (n, h, blocks, keys, d + 1)
    values = windows([v.new_zeros(n, h, 1, d), global_v, *sparse(sparse_v), v])
    queries = torch.cat([q, q.new_ones(n, h, num_blocks, block_size, 1)], dim=4)
    probs = torch.softmax(queries @ keys.transpose(-1, -2) / math.sqrt(d), dim=-1)
    if dropout is not None:
        probs = dropout(probs)
    return (probs @ values).reshape(n, h, t, d)
