"""Inputs and reference outputs of the custom ops, shared by the CPU (test_custom_op.py) and CUDA
(test_cuda_op.py) kernels' tests, and the tolerance of their float16/bfloat16 results (`half_tolerance`)."""
import types

import torch

from lsg_export.modeling.lsg_attention import LSGAttention, block_attention, lsg_attend, merge_heads, split_heads

# A half-precision kernel may err at most twice as much as PyTorch's own computation in that dtype (flash-attention's
# tests' rule), plus a floor for cases where PyTorch's error is 0 (exactly representable outputs, rows of zeros):
# 1e-5 is far below one float16 step at 1 (9.8e-4), so it loosens nothing a rounding difference could hide behind.
HALF_ERROR_FACTOR = 2
HALF_ERROR_FLOOR = 1e-5


def half_tolerance(torch_out, expected):
    """Max error allowed a float16/bfloat16 kernel against the float32 `expected`: HALF_ERROR_FACTOR times PyTorch's
    own max error there (`torch_out`: the reference function run on the inputs cast to that dtype, on CPU)
    plus HALF_ERROR_FLOOR."""
    assert torch_out.dtype in (torch.float16, torch.bfloat16) and torch_out.shape == expected.shape
    torch_error = (torch_out.float().cpu() - expected.float().cpu()).abs().max().item()
    return HALF_ERROR_FACTOR * torch_error + HALF_ERROR_FLOOR


def block_reference(inputs, bs, sbs, sf):
    """block_attention on BlockSparseAttention's inputs (q, k, v, key_mask, global_k, global_v [, sparse_k,
    sparse_v, sparse_mask]) in their dtype, on CPU."""
    inputs = [x.cpu() for x in inputs]
    return block_attention(*inputs[:6], *(inputs[6:] or [None] * 3), bs, sbs, sf)


def lsg_reference(inputs, heads, g, bs, sbs, sf):
    """lsg_attend on LSGAttention's inputs (q, k, v (n, G + T, h * d), key_mask (n, T) [, sparse_k, sparse_v,
    sparse_mask]) in their dtype, on CPU; (n, G + T, h * d) like the op."""
    inputs = [x.cpu() for x in inputs]
    q, k, v = (split_heads(x, heads) for x in inputs[:3])
    return merge_heads(lsg_attend(q, k, v, inputs[3], *(inputs[4:] or [None] * 3), g, bs, sbs, sf))


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
    inputs = [x.contiguous() for x in [merge_heads(q), merge_heads(k), merge_heads(v), key_mask, *sparse]]
    expected = lsg_reference(inputs, h, g, bs, sbs, sf)
    return [x.to(device) for x in inputs], expected.to(device)
