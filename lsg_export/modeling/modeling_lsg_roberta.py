"""LSG RoBERTa, CamemBERT and XLM-RoBERTa: BERT's LSG encoder with RoBERTa's position ids.

Positions start at padding_idx + 1 and padding tokens take padding_idx, as in RoBERTa."""
import torch
import torch.nn as nn
from transformers.models.camembert import modeling_camembert as camembert
from transformers.models.camembert.configuration_camembert import CamembertConfig
from transformers.models.roberta import modeling_roberta as roberta
from transformers.models.roberta.configuration_roberta import RobertaConfig
from transformers.models.xlm_roberta import modeling_xlm_roberta as xlm_roberta
from transformers.models.xlm_roberta.configuration_xlm_roberta import XLMRobertaConfig

from .lsg_attention import LSGAttention  # noqa: F401  (transformers copies only direct relative imports)
from .lsg_compat import return_dict_of  # noqa: F401  (imported by modeling_lsg_bert: it must be copied too)
from .lsg_base import apply_lsg_options, lsg_heads, pop_lsg_options
from .modeling_lsg_bert import LSGBertEmbeddings, LSGBertModel

HEAD_NAMES = ("ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
              "ForMultipleChoice")


class LSGRobertaEmbeddings(LSGBertEmbeddings):
    def __init__(self, config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=self.padding_idx)

    def position_ids_for(self, input_ids, inputs_embeds):
        if input_ids is None:
            t = inputs_embeds.shape[1]
            return torch.arange(self.padding_idx + 1, t + self.padding_idx + 1,
                                device=inputs_embeds.device).unsqueeze(0)
        mask = input_ids.ne(self.padding_idx).int()
        return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + self.padding_idx


class LSGRobertaConfig(RobertaConfig):
    def __init__(self, **kwargs):
        options = pop_lsg_options(kwargs)
        super().__init__(**kwargs)
        apply_lsg_options(self, options)


class LSGCamembertConfig(CamembertConfig):
    def __init__(self, **kwargs):
        options = pop_lsg_options(kwargs)
        super().__init__(**kwargs)
        apply_lsg_options(self, options)


class LSGXLMRobertaConfig(XLMRobertaConfig):
    def __init__(self, **kwargs):
        options = pop_lsg_options(kwargs)
        super().__init__(**kwargs)
        apply_lsg_options(self, options)


class LSGRobertaModel(LSGBertModel, roberta.RobertaModel):
    config_class = LSGRobertaConfig
    base_model_prefix = "roberta"
    embeddings_class = LSGRobertaEmbeddings


class LSGCamembertModel(LSGBertModel, camembert.CamembertModel):
    config_class = LSGCamembertConfig
    base_model_prefix = "roberta"
    embeddings_class = LSGRobertaEmbeddings


class LSGXLMRobertaModel(LSGBertModel, xlm_roberta.XLMRobertaModel):
    config_class = LSGXLMRobertaConfig
    base_model_prefix = "roberta"
    embeddings_class = LSGRobertaEmbeddings


for _module, _prefix, _model, _config in (
        (roberta, "Roberta", LSGRobertaModel, LSGRobertaConfig),
        (camembert, "Camembert", LSGCamembertModel, LSGCamembertConfig),
        (xlm_roberta, "XLMRoberta", LSGXLMRobertaModel, LSGXLMRobertaConfig)):
    globals().update(lsg_heads(__name__, _model, _config, [getattr(_module, _prefix + h) for h in HEAD_NAMES]))
