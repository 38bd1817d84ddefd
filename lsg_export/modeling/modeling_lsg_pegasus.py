"""LSG Pegasus: Pegasus whose encoder self-attention is LSG attention, with global tokens in front.

The decoder stays dense. Parameter names are Pegasus' own plus `encoder.global_embeddings`
(reference format); see lsg_seq2seq.py for the semantics. Pegasus has no `layernorm_embedding`:
the globals go in front of tokens * embed_scale + sinusoidal positions, then dropout."""
from transformers.models.pegasus.configuration_pegasus import PegasusConfig
from transformers.models.pegasus.modeling_pegasus import (
    PegasusEncoder, PegasusForCausalLM, PegasusForConditionalGeneration, PegasusModel)

from .lsg_attention import LSGAttention  # noqa: F401  (transformers copies only direct relative imports)
from .lsg_base import LSG_DEFAULTS  # noqa: F401  (imported by lsg_seq2seq: it must be copied too)
from .lsg_compat import init_family_encoder
from .lsg_seq2seq import LSGEncoderMixin, LSGSeq2SeqModelMixin, build_lsg_model, seq2seq_config_init, seq2seq_heads


class LSGPegasusConfig(PegasusConfig):
    def __init__(self, **kwargs):
        seq2seq_config_init(self, PegasusConfig, kwargs)


class LSGPegasusEncoder(LSGEncoderMixin, PegasusEncoder):
    def __init__(self, config, embed_tokens=None):
        init_family_encoder(self, PegasusEncoder, config, embed_tokens)
        self.setup_lsg(config)

    def token_embeddings(self, input_ids):
        return self.embed_tokens(input_ids) * self.embed_scale

    def position_embeddings(self, inputs):
        return self.embed_positions(inputs.shape).unsqueeze(0)  # the sinusoidal table from row 0


class LSGPegasusModel(LSGSeq2SeqModelMixin, PegasusModel):
    config_class = LSGPegasusConfig

    def __init__(self, config, **unused):
        PegasusModel.__init__(self, config)
        build_lsg_model(self, LSGPegasusEncoder)


globals().update(seq2seq_heads(__name__, LSGPegasusModel, LSGPegasusConfig, (PegasusForConditionalGeneration,),
                               PegasusForCausalLM))
