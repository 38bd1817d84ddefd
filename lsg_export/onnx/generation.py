"""The graphs of a seq2seq export driven by transformers' own generate() (greedy, beam search, ...), without
optimum: a PreTrainedModel whose forward runs ONNX Runtime sessions and keeps the decoder's key / value
states in transformers' EncoderDecoderCache, so that generate's cache handling (beam reordering included)
is transformers'. Works on transformers 4.5x (`past_key_values`) and 5.x (`cache`).

    model = load_generator(folder, sessions, use_merged=True)  # sessions: {encoder, decoder, decoder_with_past, merged}
    tokens = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=64, num_beams=4)
"""
from pathlib import Path

import numpy as np
import torch

from ..errors import LSGExportError
from ..quiet import quiet_transformers


def _generator_class():
    """Built on first use: transformers is imported only then, as elsewhere in lsg_export."""
    from transformers import GenerationConfig, GenerationMixin, PretrainedConfig, PreTrainedModel
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

    # the cache's name in forward and in the output: `cache` from transformers 5.2x, `past_key_values` before
    cache_name = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"

    class OrtEncoder(torch.nn.Module):
        main_input_name = "input_ids"

        def __init__(self, session):
            super().__init__()
            self.session = session
            self.names = [i.name for i in session.get_inputs()]

        def forward(self, input_ids=None, attention_mask=None, **unused):
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
            hidden = self.session.run(None, {n: feeds[n].cpu().numpy() for n in self.names})[0]
            return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))

    class OrtSeq2SeqGenerator(PreTrainedModel, GenerationMixin):
        config_class = PretrainedConfig
        main_input_name = "input_ids"
        base_model_prefix = "ort"

        def __init__(self, config, sessions):
            super().__init__(config)
            self.encoder = OrtEncoder(sessions["encoder"])
            self.sessions = sessions
            self.layers = config.decoder_layers
            # generate reads the model's device and dtype from its parameters: one that does nothing
            self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

        def get_encoder(self):
            return self.encoder

        def run_decoder(self, decoder_ids, mask, hidden, past):
            """(logits, self k/v per layer, cross k/v per layer or None) of one call of the decoder graphs."""
            numpy = {"input_ids": decoder_ids.cpu().numpy(), "encoder_attention_mask": mask.cpu().numpy()}
            merged = self.sessions.get("merged")
            heads = self.config.decoder_attention_heads
            if past is None:
                feeds = {**numpy, "encoder_hidden_states": hidden.cpu().numpy()}
                if merged is not None:  # the first step gets empty past tensors, as in the merged graph's contract
                    empty = np.zeros((decoder_ids.shape[0], heads, 0, self.config.d_model // heads), np.float32)
                    feeds.update({n: empty for n in self.past_names(merged)}, use_cache_branch=np.array([False]))
                outputs = (merged or self.sessions["decoder"]).run(None, feeds)
                presents = outputs[1:]
                return (outputs[0], [presents[4 * i: 4 * i + 2] for i in range(self.layers)],
                        [presents[4 * i + 2: 4 * i + 4] for i in range(self.layers)])
            feeds = {**numpy, **dict(zip(self.past_names(merged or self.sessions["decoder_with_past"]), past))}
            if merged is not None:
                feeds.update(encoder_hidden_states=hidden.cpu().numpy(), use_cache_branch=np.array([True]))
            outputs = (merged or self.sessions["decoder_with_past"]).run(None, feeds)
            step = 4 if merged is not None else 2  # the merged graph's past branch gives encoder placeholders
            return outputs[0], [outputs[1 + step * i: 3 + step * i] for i in range(self.layers)], None

        @staticmethod
        def past_names(session):
            return [i.name for i in session.get_inputs() if i.name.startswith("past_key_values")]

        def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None,
                    use_cache=None, return_dict=None, **kwargs):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if encoder_outputs is None:
                encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
            hidden = encoder_outputs[0]
            if attention_mask is None:
                attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long)
            if cache is None:
                cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            seen = cache.get_seq_length()
            if seen:
                past = []
                for i in range(self.layers):
                    own, cross = cache.self_attention_cache.layers[i], cache.cross_attention_cache.layers[i]
                    past += [t.numpy() for t in (own.keys, own.values, cross.keys, cross.values)]
                logits, own, _ = self.run_decoder(decoder_input_ids[:, seen:], attention_mask, hidden, past)
                for i, (key, value) in enumerate(own):  # the graph returns the whole past: add its new rows
                    cache.self_attention_cache.update(torch.from_numpy(key[:, :, seen:]),
                                                      torch.from_numpy(value[:, :, seen:]), i)
            else:
                logits, own, cross = self.run_decoder(decoder_input_ids, attention_mask, hidden, None)
                for i in range(self.layers):
                    cache.self_attention_cache.update(*(torch.from_numpy(t) for t in own[i]), i)
                    cache.cross_attention_cache.update(*(torch.from_numpy(t) for t in cross[i]), i)
            return Seq2SeqLMOutput(logits=torch.from_numpy(logits), **{cache_name: cache},
                                   encoder_last_hidden_state=hidden)

        def prepare_inputs_for_generation(self, decoder_input_ids, attention_mask=None, encoder_outputs=None,
                                          **kwargs):
            # every decoder id: forward feeds the graphs the ids the cache has not seen
            return {"decoder_input_ids": decoder_input_ids, "attention_mask": attention_mask,
                    "encoder_outputs": encoder_outputs, cache_name: kwargs.get(cache_name)}

    return OrtSeq2SeqGenerator, GenerationConfig


def load_generator(folder, sessions, use_merged):
    """An OrtSeq2SeqGenerator on `sessions` ({encoder, decoder, decoder_with_past[, merged]}: ONNX Runtime
    sessions of `folder`'s graphs) with the folder's config and generation config."""
    from transformers import AutoConfig
    generator_class, generation_config_class = _generator_class()
    folder = Path(folder)
    sessions = dict(sessions)
    if not use_merged:
        sessions.pop("merged", None)
    with quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(folder)  # the family's own config (an export has no auto_map)
        except (OSError, ValueError) as error:
            raise LSGExportError(f"{folder}: cannot read config.json ({str(error).splitlines()[0][:200]})") from None
        model = generator_class(config, sessions).eval()
        if (folder / "generation_config.json").is_file():
            model.generation_config = generation_config_class.from_pretrained(folder)
        else:
            model.generation_config = generation_config_class.from_model_config(config)
    return model


__all__ = ["load_generator"]
