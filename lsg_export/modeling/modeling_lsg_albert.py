"""LSG ALBERT: ALBERT whose self-attention is LSG attention, with global tokens (of the embedding
width) in front; layers are shared across groups as in ALBERT."""
import torch.nn as nn
from transformers.activations import ACT2FN
from transformers.models.albert.configuration_albert import AlbertConfig
from transformers.models.albert.modeling_albert import (
    AlbertEmbeddings, AlbertForMaskedLM, AlbertForMultipleChoice, AlbertForPreTraining,
    AlbertForQuestionAnswering, AlbertForSequenceClassification, AlbertForTokenClassification, AlbertModel,
    AlbertPreTrainedModel)

from .lsg_attention import LSGAttention  # noqa: F401  (transformers copies only direct relative imports)
from .lsg_compat import return_dict_of
from .lsg_base import (LSGEmbeddingsMixin, LSGSelfAttention, apply_lsg_options, init_global_embeddings,
                       lsg_encode, lsg_heads, model_output, pop_lsg_options)


class LSGAlbertConfig(AlbertConfig):
    def __init__(self, **kwargs):
        options = pop_lsg_options(kwargs)
        super().__init__(**kwargs)
        apply_lsg_options(self, options)


class LSGAlbertEmbeddings(LSGEmbeddingsMixin, AlbertEmbeddings):
    def __init__(self, config):
        super().__init__(config)
        init_global_embeddings(self, config, config.embedding_size)


class LSGAlbertAttention(LSGSelfAttention):
    def __init__(self, config):
        super().__init__(config)
        self.output_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states, key_mask):
        context = super().forward(hidden_states, key_mask)
        return self.LayerNorm(hidden_states + self.output_dropout(self.dense(context)))


class LSGAlbertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.full_layer_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = LSGAlbertAttention(config)
        self.ffn = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden_states, key_mask):
        attended = self.attention(hidden_states, key_mask)
        return self.full_layer_layer_norm(self.ffn_output(self.activation(self.ffn(attended))) + attended)


class LSGAlbertLayerGroup(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.albert_layers = nn.ModuleList([LSGAlbertLayer(config) for _ in range(config.inner_group_num)])


class LSGAlbertTransformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embedding_hidden_mapping_in = nn.Linear(config.embedding_size, config.hidden_size)
        self.albert_layer_groups = nn.ModuleList(
            [LSGAlbertLayerGroup(config) for _ in range(config.num_hidden_groups)])

    def forward(self, hidden_states, key_mask, output_hidden_states=False):
        hidden_states = self.embedding_hidden_mapping_in(hidden_states)
        all_hidden = (hidden_states,) if output_hidden_states else None
        layers, groups = self.config.num_hidden_layers, self.config.num_hidden_groups
        for i in range(layers):
            for layer in self.albert_layer_groups[int(i / (layers / groups))].albert_layers:
                hidden_states = layer(hidden_states, key_mask)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden_states,)
        return hidden_states, all_hidden


class LSGAlbertModel(AlbertModel):
    config_class = LSGAlbertConfig

    def __init__(self, config, add_pooling_layer=True):
        AlbertPreTrainedModel.__init__(self, config)
        self.config = config
        self.embeddings = LSGAlbertEmbeddings(config)
        self.encoder = LSGAlbertTransformer(config)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if add_pooling_layer else None
        self.pooler_activation = nn.Tanh() if add_pooling_layer else None
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_hidden_states=None, return_dict=None, **unused):
        return_dict = return_dict_of(self.config, return_dict)
        embedded = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids,
                                   position_ids=position_ids, inputs_embeds=inputs_embeds)
        sequence_output, all_hidden = lsg_encode(
            self.config, embedded, attention_mask, lambda h, m: self.encoder(h, m, bool(output_hidden_states)))
        pooled_output = None
        if self.pooler is not None:
            pooled_output = self.pooler_activation(self.pooler(sequence_output[:, 0]))
        return model_output(sequence_output, pooled_output, all_hidden, return_dict)


globals().update(lsg_heads(__name__, LSGAlbertModel, LSGAlbertConfig, (
    AlbertForPreTraining, AlbertForMaskedLM, AlbertForSequenceClassification, AlbertForTokenClassification,
    AlbertForQuestionAnswering, AlbertForMultipleChoice)))
