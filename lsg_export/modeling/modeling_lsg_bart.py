"""LSG BART: BART whose encoder self-attention is LSG attention, with global tokens in front.

The decoder stays dense. Parameter names are BART's own plus `encoder.global_embeddings`
(reference format); see lsg_seq2seq.py for the semantics."""
from transformers.models.bart.configuration_bart import BartConfig
from transformers.models.bart.modeling_bart import (
    BartEncoder, BartForCausalLM, BartForConditionalGeneration, BartForQuestionAnswering,
    BartForSequenceClassification, BartModel)

from .lsg_attention import LSGAttention  # noqa: F401  (transformers copies only direct relative imports)
from .lsg_base import LSG_DEFAULTS  # noqa: F401  (imported by lsg_seq2seq: it must be copied too)
from .lsg_compat import init_family_encoder
from .lsg_seq2seq import LSGEncoderMixin, LSGSeq2SeqModelMixin, build_lsg_model, seq2seq_config_init, seq2seq_heads


class LSGBartConfig(BartConfig):
    def __init__(self, **kwargs):
        seq2seq_config_init(self, BartConfig, kwargs)


class LSGBartEncoder(LSGEncoderMixin, BartEncoder):
    def __init__(self, config, embed_tokens=None):
        init_family_encoder(self, BartEncoder, config, embed_tokens)
        self.setup_lsg(config)


class LSGBartModel(LSGSeq2SeqModelMixin, BartModel):
    config_class = LSGBartConfig

    def __init__(self, config, **unused):
        BartModel.__init__(self, config)
        build_lsg_model(self, LSGBartEncoder)


globals().update(seq2seq_heads(__name__, LSGBartModel, LSGBartConfig, (
    BartForConditionalGeneration, BartForSequenceClassification, BartForQuestionAnswering), BartForCausalLM))
