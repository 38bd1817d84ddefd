"""Inputs and reference outputs of the custom ops, shared by the CPU (test_custom_op.py) and CUDA
(test_cuda_op.py) kernels' tests."""
import types

import torch

from lsg_export.modeling.lsg_attention import LSGAttention, lsg_attend


def padding_mask(t, lengths):
    """(n, T) additive mask: row r masked from lengths[r] on."""
    key_mask = torch.zeros(len(lengths), t)
    for row, length in enumerate(lengths):
        key_mask[row, length:] = torch.finfo(torch.float32).min
    return key_mask


def compressed(q, k, v, key_mask, g, bs, sbs, sf, sparsity_type):
    """sparse_k, sparse_v, sparse_mask of (n, h, T, d) tokens ([] without a compressed part)."""
    if sparsity_type == "none" or not sbs:
        return []
    config = types.SimpleNamespace(block_size=bs, sparse_block_size=sbs, sparsity_factor=sf,
                                   sparsity_type=sparsity_type, num_global_tokens=max(g, 1))
    return list(LSGAttention(config).compress(q, k, v, key_mask[:, None, :, None]))


def make_lsg_case(seed, n, h, blocks, d, g, bs, sbs, sf, sparsity_type, lengths, device="cpu", soft_mask=False):
    """Float32 inputs of LSGAttention (q, k, v (n, G + T, h * d), key_mask (n, T) with a masked tail per
    row, the compressed inputs of the T tokens) and lsg_attend's output in that layout, on `device`.
    soft_mask: the visible tokens' mask values in (-2, 0] instead of 0 (the mask is additive)."""
    generator = torch.Generator().manual_seed(seed)
    t = blocks * bs
    q, k, v = (torch.randn(n, h, g + t, d, generator=generator) for _ in range(3))
    key_mask = padding_mask(t, lengths) - (2 * torch.rand(n, t, generator=generator) if soft_mask else 0)
    sparse = compressed(q[:, :, g:], k[:, :, g:], v[:, :, g:], key_mask, g, bs, sbs, sf, sparsity_type)
    expected = lsg_attend(q, k, v, key_mask, *(sparse or [None] * 3), g, bs, sbs, sf)
    merged = lambda x: x.transpose(1, 2).reshape(n, g + t, h * d)  # noqa: E731  (n, h, rows, d) -> (n, rows, h * d)
    inputs = [x.contiguous().to(device) for x in [merged(q), merged(k), merged(v), key_mask, *sparse]]
    return inputs, merged(expected).to(device)
