"""LSG mBART (BARThez checkpoints too: model_type mbart): mBART whose encoder self-attention is LSG
attention, with global tokens in front.

The decoder stays dense. Parameter names are mBART's own plus `encoder.global_embeddings`
(reference format); see lsg_seq2seq.py for the semantics."""
from transformers.models.mbart.configuration_mbart import MBartConfig
from transformers.models.mbart.modeling_mbart import (
    MBartEncoder, MBartForCausalLM, MBartForConditionalGeneration, MBartForQuestionAnswering,
    MBartForSequenceClassification, MBartModel)

from .lsg_attention import LSGAttention  # noqa: F401  (transformers copies only direct relative imports)
from .lsg_base import LSG_DEFAULTS  # noqa: F401  (imported by lsg_seq2seq: it must be copied too)
from .lsg_compat import init_family_encoder
from .lsg_seq2seq import LSGEncoderMixin, LSGSeq2SeqModelMixin, build_lsg_model, seq2seq_config_init, seq2seq_heads


class LSGMBartConfig(MBartConfig):
    def __init__(self, **kwargs):
        seq2seq_config_init(self, MBartConfig, kwargs)


class LSGMBartEncoder(LSGEncoderMixin, MBartEncoder):
    def __init__(self, config, embed_tokens=None):
        init_family_encoder(self, MBartEncoder, config, embed_tokens)
        self.setup_lsg(config)


class LSGMBartModel(LSGSeq2SeqModelMixin, MBartModel):
    config_class = LSGMBartConfig

    def __init__(self, config, **unused):
        MBartModel.__init__(self, config)
        build_lsg_model(self, LSGMBartEncoder)


globals().update(seq2seq_heads(__name__, LSGMBartModel, LSGMBartConfig, (
    MBartForConditionalGeneration, MBartForSequenceClassification, MBartForQuestionAnswering), MBartForCausalLM))
