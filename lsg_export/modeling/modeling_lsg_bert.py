"""LSG BERT: BERT whose self-attention is LSG attention, with global tokens in front.

Parameter names are BERT's own plus `embeddings.global_embeddings` (reference format)."""
import torch.nn as nn
from transformers.models.bert.configuration_bert import BertConfig
from transformers.models.bert.modeling_bert import (
    BertForMaskedLM, BertForMultipleChoice, BertForPreTraining, BertForQuestionAnswering,
    BertForSequenceClassification, BertForTokenClassification, BertEmbeddings, BertIntermediate, BertModel,
    BertOutput, BertPooler, BertPreTrainedModel, BertSelfOutput)

from .lsg_attention import LSGAttention  # noqa: F401  (transformers copies only direct relative imports)
from .lsg_compat import return_dict_of
from .lsg_base import (LSGEmbeddingsMixin, LSGSelfAttention, apply_lsg_options, init_global_embeddings,
                       lsg_encode, lsg_heads, model_output, pop_lsg_options)


class LSGBertConfig(BertConfig):
    def __init__(self, **kwargs):
        options = pop_lsg_options(kwargs)
        super().__init__(**kwargs)
        apply_lsg_options(self, options)


class LSGBertEmbeddings(LSGEmbeddingsMixin, BertEmbeddings):
    def __init__(self, config):
        super().__init__(config)
        init_global_embeddings(self, config, config.hidden_size)


class LSGBertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = LSGSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states, key_mask):
        return self.output(self.self(hidden_states, key_mask), hidden_states)


class LSGBertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = LSGBertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states, key_mask):
        attended = self.attention(hidden_states, key_mask)
        return self.output(self.intermediate(attended), attended)


class LSGBertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([LSGBertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, key_mask, output_hidden_states=False):
        all_hidden = (hidden_states,) if output_hidden_states else None
        for layer in self.layer:
            hidden_states = layer(hidden_states, key_mask)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden_states,)
        return hidden_states, all_hidden


class LSGBertModel(BertModel):
    config_class = LSGBertConfig
    embeddings_class = LSGBertEmbeddings

    def __init__(self, config, add_pooling_layer=True):
        BertPreTrainedModel.__init__(self, config)
        self.config = config
        self.embeddings = self.embeddings_class(config)
        self.encoder = LSGBertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_hidden_states=None, return_dict=None, **unused):
        return_dict = return_dict_of(self.config, return_dict)
        embedded = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids,
                                   position_ids=position_ids, inputs_embeds=inputs_embeds)
        sequence_output, all_hidden = lsg_encode(
            self.config, embedded, attention_mask, lambda h, m: self.encoder(h, m, bool(output_hidden_states)))
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return model_output(sequence_output, pooled_output, all_hidden, return_dict)


globals().update(lsg_heads(__name__, LSGBertModel, LSGBertConfig, (
    BertForPreTraining, BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification,
    BertForQuestionAnswering, BertForMultipleChoice)))
