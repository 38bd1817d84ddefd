"""LSG DistilBERT: DistilBERT whose self-attention is LSG attention, with global tokens in front."""
import torch.nn as nn
from transformers.models.distilbert.configuration_distilbert import DistilBertConfig
from transformers.models.distilbert.modeling_distilbert import (
    FFN, DistilBertForMaskedLM, DistilBertForMultipleChoice, DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification, DistilBertForTokenClassification, DistilBertModel,
    DistilBertPreTrainedModel, Embeddings)

from .lsg_attention import LSGAttention
from .lsg_compat import return_dict_of
from .lsg_base import (LSGEmbeddingsMixin, apply_lsg_options, init_global_embeddings, lsg_encode, lsg_heads,
                       model_output, pop_lsg_options)


class LSGDistilBertConfig(DistilBertConfig):
    def __init__(self, **kwargs):
        options = pop_lsg_options(kwargs)
        super().__init__(**kwargs)
        apply_lsg_options(self, options)


class LSGDistilBertEmbeddings(LSGEmbeddingsMixin, Embeddings):
    def __init__(self, config):
        super().__init__(config)
        init_global_embeddings(self, config, config.dim)


class LSGDistilBertSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_heads = config.n_heads
        self.q_lin = nn.Linear(config.dim, config.dim)
        self.k_lin = nn.Linear(config.dim, config.dim)
        self.v_lin = nn.Linear(config.dim, config.dim)
        self.out_lin = nn.Linear(config.dim, config.dim)
        self.attention = LSGAttention(config, config.attention_dropout)

    def forward(self, hidden_states, key_mask):
        q, k, v = (lin(hidden_states) for lin in (self.q_lin, self.k_lin, self.v_lin))
        return self.out_lin(self.attention.forward_tokens(q, k, v, key_mask, self.n_heads))


class LSGTransformerBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = LSGDistilBertSelfAttention(config)
        self.sa_layer_norm = nn.LayerNorm(config.dim, eps=1e-12)
        self.ffn = FFN(config)
        self.output_layer_norm = nn.LayerNorm(config.dim, eps=1e-12)

    def forward(self, hidden_states, key_mask):
        attended = self.sa_layer_norm(self.attention(hidden_states, key_mask) + hidden_states)
        return self.output_layer_norm(self.ffn(attended) + attended)


class LSGTransformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([LSGTransformerBlock(config) for _ in range(config.n_layers)])

    def forward(self, hidden_states, key_mask, output_hidden_states=False):
        all_hidden = (hidden_states,) if output_hidden_states else None
        for layer in self.layer:
            hidden_states = layer(hidden_states, key_mask)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden_states,)
        return hidden_states, all_hidden


class LSGDistilBertModel(DistilBertModel):
    config_class = LSGDistilBertConfig

    def __init__(self, config, add_pooling_layer=False):
        DistilBertPreTrainedModel.__init__(self, config)
        self.embeddings = LSGDistilBertEmbeddings(config)
        self.transformer = LSGTransformer(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=None,
                return_dict=None, **unused):
        return_dict = return_dict_of(self.config, return_dict)
        embedded = self.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds)
        sequence_output, all_hidden = lsg_encode(
            self.config, embedded, attention_mask, lambda h, m: self.transformer(h, m, bool(output_hidden_states)))
        return model_output(sequence_output, None, all_hidden, return_dict)


globals().update(lsg_heads(__name__, LSGDistilBertModel, LSGDistilBertConfig, (
    DistilBertForMaskedLM, DistilBertForSequenceClassification, DistilBertForTokenClassification,
    DistilBertForQuestionAnswering, DistilBertForMultipleChoice)))
