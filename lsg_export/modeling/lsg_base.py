"""Family-independent plumbing of an LSG encoder: options, global tokens, padding, pooling.

Imports only torch and transformers: copied next to every converted model with the family files.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .lsg_attention import DENSE_BLOCKS, LSGAttention, validate_lsg_options

LSG_DEFAULTS = {
    "adaptive": True,
    "base_model_prefix": "lsg",
    "block_size": 128,
    "lsh_num_pre_rounds": 1,
    "mask_first_token": False,
    "num_global_tokens": 1,
    "pool_with_global": True,
    "sparse_block_size": 128,
    "sparsity_factor": 2,
    "sparsity_type": "norm",
}
# the options a conversion sets (LSG_DEFAULTS less the bookkeeping keys), in the order they are reported
LSG_OPTION_NAMES = ("block_size", "sparse_block_size", "sparsity_factor", "sparsity_type", "num_global_tokens",
                    "mask_first_token", "pool_with_global", "lsh_num_pre_rounds")


def pop_lsg_options(kwargs):
    """Take the LSG keys (reference format) out of a config's kwargs, with their defaults."""
    return {key: kwargs.pop(key, default) for key, default in LSG_DEFAULTS.items()}


def apply_lsg_options(config, options):
    """Validate the LSG keys and set them on the family's config (called from its __init__)."""
    options["sparsity_type"] = validate_lsg_options(
        options["block_size"], options["sparse_block_size"], options["sparsity_factor"],
        options["sparsity_type"], options["num_global_tokens"])
    if options["mask_first_token"] and not options["pool_with_global"]:
        options["pool_with_global"] = True  # as the reference: the first output then comes from the global
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("LSG attention needs position_embedding_type='absolute'")
    config.__dict__.update(options)


class LSGSelfAttention(nn.Module):
    """query / key / value projections (the names bert, roberta and albert use) + LSG attention."""

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        hidden = config.hidden_size
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attention = LSGAttention(config, config.attention_probs_dropout_prob)

    def forward(self, hidden_states, key_mask):
        return self.attention.forward_tokens(self.query(hidden_states), self.key(hidden_states),
                                             self.value(hidden_states), key_mask, self.num_heads)


def add_global_tokens(embeddings, sums):
    """Put the G global embeddings in front of the summed token embeddings, then LayerNorm + dropout."""
    n = sums.shape[0]
    globals_ = embeddings.global_embeddings.weight[: embeddings.num_global_tokens]
    x = torch.cat([globals_.unsqueeze(0).expand(n, -1, -1).to(sums.dtype), sums], dim=1)
    return embeddings.dropout(embeddings.LayerNorm(x))


def init_global_embeddings(embeddings, config, width):
    embeddings.num_global_tokens = config.num_global_tokens
    embeddings.global_embeddings = nn.Embedding(512, width)


def additive_mask(attention_mask, dtype):
    return (1.0 - attention_mask.to(dtype)) * torch.finfo(dtype).min


def use_dense_attention(config):
    """Make the model of `config` (a copy: this changes it) run dense attention on unpadded tokens: the outputs
    of LSG attention for inputs of at most dense_limit(config) tokens, at the cost of their own length
    (lsg_attention.dense_attend); wrong for longer inputs."""
    config.dense_attention = True


def dense_limit(config):
    """The longest input for which a model under use_dense_attention computes LSG attention."""
    return DENSE_BLOCKS * config.block_size


def lsg_encode(config, embedded, attention_mask, run_layers, keep_globals=False):
    """embedded: (n, G + t, D) -> (n, t, D), or (n, G + t, D) with keep_globals.

    Pads to a multiple of block_size (always, so that one traced graph serves every length),
    masks padding (and the first token with mask_first_token), runs the layers, puts the first
    global's output in place of the first token's (pool_with_global) and cuts globals and padding.
    keep_globals (encoder-decoders passing the globals to the decoder): no pooling, globals kept."""
    g, block = config.num_global_tokens, config.block_size
    if getattr(config, "dense_attention", False):  # use_dense_attention: no padding
        block = 1
    n, t = embedded.shape[0], embedded.shape[1] - g
    if attention_mask is None:
        attention_mask = torch.ones(n, t, device=embedded.device)
    # = (block - t % block) % block, written as ceil(t / block) * block - t: the same integer, but a
    # symbolic length then simplifies (torch.export) to block * n_blocks, which keeps export fast
    pad = (t + block - 1) // block * block - t
    hidden = F.pad(embedded, (0, 0, 0, pad))
    key_mask = additive_mask(F.pad(attention_mask, (0, pad)), embedded.dtype)
    if config.mask_first_token:
        key_mask = torch.cat([torch.full_like(key_mask[:, :1], torch.finfo(key_mask.dtype).min), key_mask[:, 1:]], 1)
    hidden, all_hidden = run_layers(hidden, key_mask)
    if keep_globals:
        return hidden[:, : g + t], all_hidden
    if config.pool_with_global:
        hidden = torch.cat([hidden[:, :g], hidden[:, :1], hidden[:, g + 1:]], dim=1)
    return hidden[:, g: g + t], all_hidden


def model_output(sequence_output, pooled_output, all_hidden, return_dict):
    if not return_dict:
        return tuple(x for x in (sequence_output, pooled_output, all_hidden) if x is not None)
    return BaseModelOutputWithPooling(
        last_hidden_state=sequence_output, pooler_output=pooled_output, hidden_states=all_hidden)


def use_lsg_base(head, lsg_model_class):
    """Replace the base model a transformers head class built with its LSG counterpart."""
    prefix = head.base_model_prefix
    original = getattr(head, prefix)
    add_pooling_layer = getattr(original, "pooler", None) is not None
    setattr(head, prefix, lsg_model_class(head.config, add_pooling_layer=add_pooling_layer))
    head.post_init()


def lsg_heads(module_name, lsg_model_class, config_class, heads):
    """LSG<Head> classes: each transformers head class with its base model swapped for the LSG one.

    Returned as {name: class} for the family module's globals(), so that auto_map can name them."""

    classes = {}
    for head in heads:
        name = "LSG" + head.__name__

        def init(self, config, _head=head):
            _head.__init__(self, config)
            use_lsg_base(self, lsg_model_class)

        classes[name] = type(name, (head,), {"__init__": init, "config_class": config_class,
                                              "__module__": module_name, "__qualname__": name})
    return classes


class LSGEmbeddingsMixin:
    """forward of bert-style embeddings (word + token type + position) with the global tokens."""

    def position_ids_for(self, input_ids, inputs_embeds):
        return self.position_ids[:, : inputs_embeds.shape[1]]

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, **unused):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if position_ids is None:
            position_ids = self.position_ids_for(input_ids, inputs_embeds)
        sums = inputs_embeds
        if hasattr(self, "token_type_embeddings"):
            if token_type_ids is None:
                token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
            sums = sums + self.token_type_embeddings(token_type_ids)
        sums = sums + self.position_embeddings(position_ids)
        return add_global_tokens(self, sums)
