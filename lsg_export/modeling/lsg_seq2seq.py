"""What BART, mBART and Pegasus share as LSG models: an LSG encoder, a dense decoder.

Only the encoder's self-attention becomes LSG attention. The G global embeddings are put in front
after token embeddings * embed_scale + positions, before `layernorm_embedding` (bart, mbart); with
`pass_global_tokens_to_decoder` (default true) the encoder output keeps them (length G + t) and the
decoder's cross-attention mask gets G ones in front; otherwise the output is pooled and cut to t
as for the encoder families.

Imports only torch and transformers: copied next to every converted model with the family files.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutput

from .lsg_attention import LSGAttention
from .lsg_compat import layer_hidden, return_dict_of
from .lsg_base import apply_lsg_options, lsg_encode, lsg_heads, pop_lsg_options

SEQ2SEQ_DEFAULTS = {"pass_global_tokens_to_decoder": True}


def seq2seq_config_init(config, parent, kwargs):
    """__init__ of an LSG seq2seq config: the encoder families' LSG keys + pass_global_tokens_to_decoder."""
    options = pop_lsg_options(kwargs)
    options.update({key: kwargs.pop(key, default) for key, default in SEQ2SEQ_DEFAULTS.items()})
    if "id2label" in kwargs and "num_labels" not in kwargs:  # 4.x BartConfig's num_labels=3 default would
        kwargs["num_labels"] = len(kwargs["id2label"])        # contradict a saved 2-label map (QA) and warn
    parent.__init__(config, **kwargs)
    apply_lsg_options(config, options)


class LSGEncoderSelfAttention(nn.Module):
    """q_proj / k_proj / v_proj / out_proj (the names bart, mbart and pegasus use) + LSG attention.

    Called by the family's own encoder layer in place of its dense attention; `attention_mask` is
    then the additive key mask (n, T) that `lsg_encode` builds."""

    def __init__(self, config):
        super().__init__()
        dim = config.d_model
        self.num_heads = config.encoder_attention_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.attention = LSGAttention(config, config.attention_dropout)

    def forward(self, hidden_states, attention_mask=None, **unused):
        q, k, v = (p(hidden_states) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(self.attention.forward_tokens(q, k, v, attention_mask, self.num_heads)), None


class LSGEncoderMixin:
    """forward of an LSG encoder, put before the family's encoder class (BartEncoder, ...).

    The family class provides `embed_tokens`, `embed_positions`, `layers`, `layernorm_embedding` and /
    or a final `layer_norm`; a family whose embeddings differ from bart's overrides `token_embeddings`
    and `position_embeddings`."""

    def setup_lsg(self, config):
        for layer in self.layers:
            layer.self_attn = LSGEncoderSelfAttention(config)
        self.num_global_tokens = config.num_global_tokens
        self.global_embeddings = nn.Embedding(512, config.d_model)
        self._init_weights(self.global_embeddings)
        for layer in self.layers:
            for module in layer.self_attn.modules():
                self._init_weights(module)

    def token_embeddings(self, input_ids):
        """Token embeddings * embed_scale (bart, mbart: their scaled embedding multiplies)."""
        return self.embed_tokens(input_ids)

    def position_embeddings(self, inputs):
        """Position embeddings of positions 0..t-1 of `inputs` (n, t), (n or 1, t, d) (bart, mbart: the
        learned table read from row 2, after its 2 offset rows)."""
        return self.embed_positions(inputs)

    def run_layers(self, hidden, key_mask, output_hidden_states):
        all_hidden = (hidden,) if output_hidden_states else None
        for layer in self.layers:
            hidden = layer_hidden(layer(hidden, key_mask, layer_head_mask=None))
            if output_hidden_states:
                all_hidden = all_hidden + (hidden,)
        if getattr(self, "layer_norm", None) is not None:  # mbart, pegasus: pre-norm layers, final LayerNorm
            hidden = self.layer_norm(hidden)
        return hidden, all_hidden

    def forward(self, input_ids=None, attention_mask=None, head_mask=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **unused):
        config = self.config
        return_dict = return_dict_of(config, return_dict)
        inputs = input_ids if input_ids is not None else inputs_embeds[:, :, -1]
        n, t = inputs.shape[0], inputs.shape[1]
        block = config.block_size
        # padded to a multiple of the block here, with the pad token, so that lsg_encode adds nothing;
        # positions only on the real tokens (the position table may stop at the maximum length)
        pad = (t + block - 1) // block * block - t
        if attention_mask is None:
            attention_mask = torch.ones(n, t, dtype=torch.long, device=inputs.device)
        mask = F.pad(attention_mask, (0, pad))
        if input_ids is not None:
            tokens = self.token_embeddings(F.pad(input_ids, (0, pad), value=config.pad_token_id))
        else:
            tokens = F.pad(inputs_embeds, (0, 0, 0, pad))
        positions = self.position_embeddings(inputs).to(tokens.dtype).expand(n, -1, -1)
        hidden = tokens + F.pad(positions, (0, 0, 0, pad))

        globals_ = self.global_embeddings.weight[: self.num_global_tokens].to(hidden.dtype)
        hidden = torch.cat([globals_.unsqueeze(0).expand(n, -1, -1), hidden], dim=1)
        if getattr(self, "layernorm_embedding", None) is not None:  # bart, mbart (pegasus has none)
            hidden = self.layernorm_embedding(hidden)
        hidden = F.dropout(hidden, p=self.dropout, training=self.training)

        keep = config.pass_global_tokens_to_decoder
        hidden, all_hidden = lsg_encode(config, hidden, mask, lambda h, m: self.run_layers(
            h, m, bool(output_hidden_states)), keep_globals=keep)
        hidden = hidden[:, : t + self.num_global_tokens] if keep else hidden[:, :t]
        if not return_dict:
            return tuple(x for x in (hidden, all_hidden) if x is not None)
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=all_hidden)


def cross_attention_mask(config, attention_mask):
    """The decoder's mask over the encoder output: G ones in front when the globals are passed on."""
    if attention_mask is None or not config.pass_global_tokens_to_decoder:
        return attention_mask
    return F.pad(attention_mask, (config.num_global_tokens, 0), value=1)


class LSGSeq2SeqModelMixin:
    """forward of an LSG encoder-decoder base model, put before the family's model class (BartModel, ...).

    Runs the LSG encoder (unless `encoder_outputs` is given, as in generate) and gives the family's
    forward the cross-attention mask that matches the encoder output."""

    def forward(self, input_ids=None, attention_mask=None, encoder_outputs=None, inputs_embeds=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = return_dict_of(self.config, return_dict)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states,
                                           return_dict=return_dict)
        return super().forward(input_ids=input_ids, attention_mask=cross_attention_mask(self.config, attention_mask),
                               encoder_outputs=encoder_outputs, inputs_embeds=inputs_embeds,
                               output_hidden_states=output_hidden_states, return_dict=return_dict, **kwargs)


def build_lsg_model(model, encoder_class):
    """Swap the dense encoder a family model built for the LSG one (same weights' names)."""
    model.encoder = encoder_class(model.config, model.shared)
    model.post_init()


def seq2seq_heads(module_name, lsg_model_class, config_class, heads, causal_lm):
    """LSG<Head> classes of the encoder-decoder heads (base model swapped) and LSG<Prefix>ForCausalLM
    (the decoder alone: dense, only its config class changes)."""
    classes = lsg_heads(module_name, lsg_model_class, config_class, heads)
    name = "LSG" + causal_lm.__name__
    classes[name] = type(name, (causal_lm,), {"config_class": config_class, "__module__": module_name,
                                              "__qualname__": name})
    return classes


__all__ = ["LSGEncoderMixin", "LSGSeq2SeqModelMixin", "LSGEncoderSelfAttention", "build_lsg_model",
           "cross_attention_mask", "seq2seq_config_init", "seq2seq_heads"]
