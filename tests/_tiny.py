"""The one factory of tiny random checkpoints (every family), used by the fixtures of conftest.py and
by the export cases of _onnx_cases.py and _deploy_cases.py."""
from pathlib import Path

import torch

TINY_BLOCK_SIZE = 8  # block_size and sparse_block_size of every tiny conversion
TINY_VOCAB = 100
CLS_ID, MASK_ID = 2, 4  # the tiny checkpoints have no tokenizer: convert reads these from the config


def tiny_config(model_type, max_positions=64, intermediate_size=64):
    """A small config of `model_type`: hidden 32, 2 layers, 4 heads, `max_positions` positions (+2 for
    roberta-like)."""
    from transformers import AlbertConfig, BertConfig, CamembertConfig, DistilBertConfig, RobertaConfig, \
        XLMRobertaConfig
    # initializer_range 0.2 (not 0.02) so that attention is far from uniform and masking errors show
    bert_like = dict(vocab_size=TINY_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=intermediate_size, initializer_range=0.2, mask_token_id=MASK_ID)
    roberta_like = dict(bert_like, max_position_embeddings=max_positions + 2, pad_token_id=1, bos_token_id=0,
                        eos_token_id=2, type_vocab_size=1)
    if model_type == "bert":
        return BertConfig(**bert_like, max_position_embeddings=max_positions, pad_token_id=0, cls_token_id=CLS_ID)
    if model_type == "albert":
        return AlbertConfig(**bert_like, embedding_size=16, max_position_embeddings=max_positions, pad_token_id=0,
                            bos_token_id=CLS_ID, eos_token_id=3)
    if model_type == "distilbert":
        return DistilBertConfig(vocab_size=TINY_VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=intermediate_size,
                                max_position_embeddings=max_positions, pad_token_id=0, initializer_range=0.2,
                                cls_token_id=CLS_ID, mask_token_id=MASK_ID)
    if model_type in ("bart", "mbart", "pegasus"):
        return tiny_seq2seq_config(model_type, max_positions, intermediate_size)
    configs = {"roberta": RobertaConfig, "camembert": CamembertConfig, "xlm-roberta": XLMRobertaConfig}
    return configs[model_type](**roberta_like)


def tiny_seq2seq_config(model_type, max_positions=64, ffn_dim=64):
    """bart / mbart / pegasus: d_model 32, 2 + 2 layers, 4 heads, `max_positions` positions, ids 0..4
    special (pad 1, bos 0, eos 2 as bart; pegasus: pad 0, eos 1); scale_embedding on, dropout off."""
    from transformers import BartConfig, MBartConfig, PegasusConfig
    common = dict(vocab_size=TINY_VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=ffn_dim, decoder_ffn_dim=ffn_dim,
                  max_position_embeddings=max_positions, init_std=0.2, scale_embedding=True, dropout=0.0,
                  attention_dropout=0.0, mask_token_id=MASK_ID)
    if model_type == "pegasus":
        return PegasusConfig(**common, pad_token_id=0, eos_token_id=1, bos_token_id=CLS_ID, decoder_start_token_id=0,
                             forced_eos_token_id=1)
    config_class = BartConfig if model_type == "bart" else MBartConfig
    return config_class(**common, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                        forced_eos_token_id=2)


def original_class(model_type, head):
    """The transformers class of `head` ('Model', 'ForMaskedLM', ...) for `model_type`."""
    import transformers
    from lsg_export.families import ALL_FAMILIES
    return getattr(transformers, ALL_FAMILIES[model_type].architecture(head))


def save_tiny_checkpoint(model_type, folder, seed=0, **config):
    """Save a random original checkpoint with the family's pre-training head (so MLM weights exist);
    `config`: tiny_config's keywords. An existing checkpoint in `folder` is kept."""
    from lsg_export.families import ALL_FAMILIES
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(seed)
    heads = ALL_FAMILIES[model_type].heads
    head = next(h for h in ("ForPreTraining", "ForConditionalGeneration", "ForMaskedLM") if h in heads)
    model = original_class(model_type, head)(tiny_config(model_type, **config)).eval()
    model.save_pretrained(folder)
    return folder
