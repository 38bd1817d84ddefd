"""Text in, summary out on an encoder-decoder export's graphs, with numpy and `tokenizers` only.

The one decoding loop of the project's servers: `lsg-export serve` runs it on ONNX Runtime sessions, and the
Triton repository `lsg-export deploy` writes copies this file next to its python-backend model, which runs it
on BLS requests to the graph models (Triton's python backend has neither torch nor transformers). It is a
standalone module on purpose: no import from lsg_export, so that the copy works alone.

    settings = GenerationSettings.from_folder(export).check()    # generation_config.json (else config.json)
    decoder = GraphDecoder(run_graph, layers, heads, head_dim, merged=True)   # run_graph(graph, feeds) -> {name: array}
    codec = TextCodec(export, settings.pad_token_id, max_tokens=4096)
    ids, mask = codec.encode(["a long report ..."])
    summaries = codec.decode(generate(encode, decoder, ids, mask, settings.override(num_beams=4)))

`generate` gives transformers' `generate()` tokens (greedy and beam search, with the generation config's
min / max lengths, forced BOS / EOS, no-repeat n-grams, length penalty and early stopping), as a
(batch, length) array padded as transformers pads it.
"""
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

SCORE_FLOOR = -1.0e9  # transformers' beam search fills impossible beams with this score
PROMPT = 1  # the decoder's prompt: its start token
TEXT_INPUT, TEXT_OUTPUT = "text_input", "text_output"  # the generate extension's field names
REQUEST_PARAMETERS = ("max_new_tokens", "num_beams")
# generation_config.json keys the loop does not implement: an export that sets them is refused, not misserved
UNSUPPORTED = {"do_sample": False, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
               "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "suppress_tokens": None,
               "begin_suppress_tokens": None, "sequence_bias": None, "num_beam_groups": 1,
               "exponential_decay_length_penalty": None, "guidance_scale": None, "force_words_ids": None,
               "constraints": None, "renormalize_logits": False}


class DecodingError(ValueError):
    """A request or a generation config the loop cannot serve; its message is one line for the caller."""


def _ids(value):
    """None, an int or a list of ints -> a list of ints."""
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


@dataclass(frozen=True)
class GenerationSettings:
    """What transformers' generate() reads from an export's generation_config.json, for the two searches."""
    decoder_start_token_id: int
    eos_token_ids: tuple
    pad_token_id: int = None
    max_length: int = 20  # decoder start token included, as transformers counts it
    max_new_tokens: int = None  # wins over max_length when set
    min_length: int = 0
    min_new_tokens: int = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: object = False  # True, False or "never"
    no_repeat_ngram_size: int = 0
    forced_bos_token_id: int = None
    forced_eos_token_ids: tuple = ()
    unsupported: dict = field(default_factory=dict)  # set keys the loop does not implement: {key: value}

    @classmethod
    def from_dict(cls, generation):
        """From generation_config.json's content (or config.json's, whose generation keys have the same names)."""
        def get(key, default=None):
            value = generation.get(key)
            return default if value is None else value

        eos = _ids(get("eos_token_id"))
        start = get("decoder_start_token_id", get("bos_token_id"))
        if start is None:
            raise DecodingError("the export's generation config has no decoder_start_token_id nor bos_token_id")
        pad = get("pad_token_id")
        unsupported = {key: generation[key] for key, neutral in UNSUPPORTED.items()
                       if generation.get(key) is not None and generation[key] != neutral}
        return cls(decoder_start_token_id=int(start), eos_token_ids=tuple(eos),
                   pad_token_id=int(pad) if pad is not None else None,
                   max_length=int(get("max_length", 20)),
                   max_new_tokens=generation.get("max_new_tokens"), min_length=int(get("min_length", 0) or 0),
                   min_new_tokens=generation.get("min_new_tokens"), num_beams=int(get("num_beams", 1) or 1),
                   length_penalty=float(get("length_penalty", 1.0)), early_stopping=get("early_stopping", False),
                   no_repeat_ngram_size=int(get("no_repeat_ngram_size", 0) or 0),
                   forced_bos_token_id=get("forced_bos_token_id"),
                   forced_eos_token_ids=tuple(_ids(get("forced_eos_token_id"))), unsupported=unsupported)

    @classmethod
    def from_folder(cls, folder):
        """From an export folder's generation_config.json, else its config.json: transformers reads only the
        first when it is there (keys it lacks take generate()'s defaults, not config.json's values)."""
        folder = Path(folder)
        for name in ("generation_config.json", "config.json"):
            if (folder / name).is_file():
                return cls.from_dict(json.loads((folder / name).read_text()))
        raise DecodingError(f"{folder}: no generation_config.json nor config.json")

    def check(self):
        if self.unsupported:
            keys = ", ".join(f"{k}={v!r}" for k, v in self.unsupported.items())
            raise DecodingError(f"the export's generation config sets {keys}, which this server's decoding "
                                f"(greedy and beam search) does not implement")
        return self

    @property
    def new_tokens(self):
        """Tokens generated at most (the decoder start token is the prompt)."""
        return int(self.max_new_tokens) if self.max_new_tokens is not None else self.max_length - 1

    def override(self, max_new_tokens=None, num_beams=None):
        """These settings with a request's parameters; DecodingError for values out of range."""
        changes = {}
        for name, value in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise DecodingError(f"{name} must be an integer >= 1, got {value!r}")
            changes[name] = int(value)
        return replace(self, **changes)


# --- the graphs -------------------------------------------------------------------------------

class GraphDecoder:
    """One decoder step on the export's decoder graphs, through `run(graph, feeds)` -> {output: array}
    (graph: "decoder", "decoder_with_past" or "decoder_merged"; an ONNX Runtime session or a BLS request).

    Called as decoder(input_ids, encoder_attention_mask, encoder_hidden_states, past) -> (logits, past), past
    None at the first step, then the list the previous call returned: per layer the self-attention key and
    value, then the cross-attention key and value, every array batch first (so beams reorder it on axis 0)."""

    def __init__(self, run, layers, heads, head_dim, merged):
        self.run, self.layers, self.heads, self.head_dim, self.merged = run, layers, heads, head_dim, merged
        self.past_names = [f"past_key_values.{i}.{side}.{kind}" for i in range(layers)
                           for side in ("decoder", "encoder") for kind in ("key", "value")]
        self.present_names = [name.replace("past_key_values", "present") for name in self.past_names]

    def __call__(self, input_ids, encoder_attention_mask, encoder_hidden_states, past):
        feeds = {"input_ids": input_ids, "encoder_attention_mask": encoder_attention_mask}
        if past is None:
            feeds["encoder_hidden_states"] = encoder_hidden_states
            if self.merged:  # the first step's branch takes empty past tensors (optimum's contract)
                empty = np.zeros((input_ids.shape[0], self.heads, 0, self.head_dim), np.float32)
                feeds.update({name: empty for name in self.past_names}, use_cache_branch=np.array([False]))
            out = self.run("decoder_merged" if self.merged else "decoder", feeds)
            return out["logits"], [out[name] for name in self.present_names]
        feeds.update(zip(self.past_names, past))
        if self.merged:
            feeds.update(encoder_hidden_states=encoder_hidden_states, use_cache_branch=np.array([True]))
        out = self.run("decoder_merged" if self.merged else "decoder_with_past", feeds)
        new = []
        for i in range(self.layers):  # the cross-attention states do not change: kept from the first step
            new += [out[f"present.{i}.decoder.key"], out[f"present.{i}.decoder.value"], past[4 * i + 2],
                    past[4 * i + 3]]
        return out["logits"], new


# --- the loop ----------------------------------------------------------------------------------

def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _process(scores, sequences, settings, max_length, prompt_length):
    """transformers' logits processors of the settings, in its order, on (rows, vocab) scores."""
    scores = scores.copy()
    length = sequences.shape[1]
    n = settings.no_repeat_ngram_size
    if n and length + 1 >= n:
        for row, tokens in enumerate(sequences.tolist()):
            prefix = tuple(tokens[length - n + 1:])
            banned = {tokens[i + n - 1] for i in range(length - n + 1) if tuple(tokens[i:i + n - 1]) == prefix}
            scores[row, list(banned)] = -np.inf
    eos = list(settings.eos_token_ids)
    if eos and settings.min_length > 0 and length < settings.min_length:
        scores[:, eos] = -np.inf
    if eos and settings.min_new_tokens and length - prompt_length < settings.min_new_tokens:
        scores[:, eos] = -np.inf
    if settings.forced_bos_token_id is not None and length == 1:
        scores[:] = -np.inf
        scores[:, settings.forced_bos_token_id] = 0
    if settings.forced_eos_token_ids and length == max_length - 1:
        scores[:] = -np.inf
        scores[:, list(settings.forced_eos_token_ids)] = 0
    return scores


def generate(encode, decoder, input_ids, attention_mask, settings):
    """Token ids (batch, length) of transformers' generate() for these inputs and settings: greedy search for
    num_beams 1, beam search above. encode(input_ids, attention_mask) -> encoder hidden states; decoder: a
    GraphDecoder (or any callable of its signature)."""
    input_ids = np.asarray(input_ids, dtype=np.int64)
    attention_mask = np.asarray(attention_mask, dtype=np.int64)
    hidden = encode(input_ids, attention_mask)
    search = _greedy if settings.num_beams == 1 else _beam_search
    return search(decoder, hidden, attention_mask, settings)


def _greedy(decoder, hidden, mask, settings):
    batch = hidden.shape[0]
    max_length = PROMPT + settings.new_tokens
    pad = settings.pad_token_id if settings.pad_token_id is not None else (settings.eos_token_ids or (0,))[0]
    sequences = np.full((batch, 1), settings.decoder_start_token_id, dtype=np.int64)
    unfinished = np.ones(batch, dtype=bool)
    past = None
    while True:
        logits, past = decoder(sequences[:, -1:], mask, hidden, past)
        scores = _process(logits[:, -1, :].astype(np.float32), sequences, settings, max_length, PROMPT)
        tokens = np.where(unfinished, scores.argmax(axis=-1), pad)
        sequences = np.concatenate([sequences, tokens[:, None]], axis=1)
        unfinished &= ~np.isin(tokens, settings.eos_token_ids)
        if not unfinished.any() or sequences.shape[1] >= max_length:
            return sequences


def _beam_search(decoder, hidden, mask, settings):
    """transformers' (4.5x / 5.x) vectorised beam search, step for step."""
    beams, batch = settings.num_beams, hidden.shape[0]
    max_length = PROMPT + settings.new_tokens
    eos = np.asarray(settings.eos_token_ids, dtype=np.int64)
    keep = max(2, 1 + len(eos)) * beams  # candidates per row: enough to keep `beams` that did not finish
    top_beams = np.arange(keep) < beams
    pad = settings.pad_token_id
    fill = (pad or int(eos[0])) if len(eos) else -1  # transformers' fill value, pad 0 included
    running = np.full((batch, beams, max_length), fill, dtype=np.int64)
    running[:, :, 0] = settings.decoder_start_token_id
    finished = running.copy()
    running_scores = np.zeros((batch, beams), np.float32)
    running_scores[:, 1:] = SCORE_FLOOR
    finished_scores = np.full((batch, beams), SCORE_FLOOR, np.float32)
    is_finished = np.zeros((batch, beams), dtype=bool)
    improvable = np.ones((batch, 1), dtype=bool)
    lengths_generated = np.zeros((batch, beams), dtype=np.int64)  # each finished sequence's new tokens
    hidden = np.repeat(hidden, beams, axis=0)
    mask = np.repeat(mask, beams, axis=0)
    past, length = None, 1
    rows = np.arange(batch)[:, None]
    while True:
        flat = running[:, :, :length].reshape(batch * beams, length)
        logits, past = decoder(flat[:, -1:], mask, hidden, past)
        log_probs = _log_softmax(logits[:, -1, :].astype(np.float32))
        log_probs = _process(log_probs, flat, settings, max_length, PROMPT)
        vocab = log_probs.shape[-1]
        totals = (log_probs.reshape(batch, beams, vocab) + running_scores[:, :, None]).reshape(batch, beams * vocab)
        order = np.argsort(-totals, axis=1, kind="stable")[:, :keep]
        top_scores = np.take_along_axis(totals, order, axis=1)
        source = order // vocab
        candidates = running[rows, source].copy()
        candidates[:, :, length] = order % vocab
        hits = np.isin(candidates[:, :, length], eos) if len(eos) else np.zeros_like(top_scores, dtype=bool)
        if length + 1 >= max_length:
            hits[:] = True
        # the running beams of the next step: the best candidates that did not stop
        open_scores = top_scores + hits.astype(np.float32) * np.float32(SCORE_FLOOR)
        pick = np.argsort(-open_scores, axis=1, kind="stable")[:, :beams]
        running = np.take_along_axis(candidates, pick[:, :, None], axis=1)
        running_scores = np.take_along_axis(open_scores, pick, axis=1)
        # the finished ones: a stopped candidate among the top `beams` enters if it beats a kept one
        just_finished = hits & top_beams[None, :]
        scored = top_scores / np.float32((length + 1 - PROMPT) ** settings.length_penalty)
        full = is_finished.all(axis=1, keepdims=True) & (settings.early_stopping is True)
        scored = scored + full.astype(np.float32) * np.float32(SCORE_FLOOR)
        scored = scored + (~improvable).astype(np.float32) * np.float32(SCORE_FLOOR)
        scored = scored + (~just_finished).astype(np.float32) * np.float32(SCORE_FLOOR)
        merged = np.concatenate([finished_scores, scored], axis=1)
        best = np.argsort(-merged, axis=1, kind="stable")[:, :beams]
        finished = np.take_along_axis(np.concatenate([finished, candidates], axis=1), best[:, :, None], axis=1)
        finished_scores = np.take_along_axis(merged, best, axis=1)
        new_lengths = np.concatenate([lengths_generated, np.full((batch, keep), length, np.int64)], axis=1)
        lengths_generated = np.take_along_axis(new_lengths, best, axis=1)
        is_finished = np.take_along_axis(np.concatenate([is_finished, just_finished], axis=1), best, axis=1)
        # the decoder's states follow the beams they continue
        origin = (np.take_along_axis(source, pick, axis=1) + rows * beams).reshape(-1)
        past = [state[origin] for state in past]
        length += 1
        improvable = _improvable(improvable, running_scores, finished_scores, is_finished, length, max_length,
                                 settings)
        if not improvable.any() or (is_finished.all() and settings.early_stopping is True) or hits.all():
            break
    out_length = PROMPT + int(lengths_generated[:, 0].max())
    return finished[:, 0, :out_length]


def _improvable(improvable, running_scores, finished_scores, is_finished, length, max_length, settings):
    """transformers' early-stop heuristic: whether a running beam can still beat the worst finished one."""
    penalty = settings.length_penalty
    if settings.early_stopping == "never" and penalty > 0.0:
        best_length = max_length - PROMPT
    else:
        best_length = length - PROMPT
    best_running = running_scores[:, :1] / np.float32(best_length ** penalty)
    worst = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), np.float32(SCORE_FLOOR))
    return improvable & (best_running > worst).any(axis=-1, keepdims=True)


# --- text ----------------------------------------------------------------------------------------

def _clean_up_tokenization(text):
    """transformers' clean_up_tokenization (spaces before punctuation and English contractions)."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


class TextCodec:
    """tokenizer.json of an export through `tokenizers`: texts -> padded ids (never truncated), ids -> texts
    as transformers' decode(skip_special_tokens=True) gives them."""

    def __init__(self, folder, pad_token_id, max_tokens):
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.pad_token_id = pad_token_id if pad_token_id is not None else 0
        self.max_tokens = max_tokens
        config = {}
        if (folder / "tokenizer_config.json").is_file():
            config = json.loads((folder / "tokenizer_config.json").read_text())
        self.clean_up = bool(config.get("clean_up_tokenization_spaces", False))

    def encode(self, texts):
        """(input_ids, attention_mask) of the texts, padded at the end to the longest; DecodingError for a text
        longer than max_tokens."""
        encodings = self.tokenizer.encode_batch(list(texts))
        for i, encoding in enumerate(encodings):
            if len(encoding.ids) > self.max_tokens:
                raise DecodingError(f"text {i} is {len(encoding.ids)} tokens long, longer than {self.max_tokens}, "
                                    f"the longest this export accepts")
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for i, encoding in enumerate(encodings):
            ids[i, :len(encoding.ids)] = encoding.ids
            mask[i, :len(encoding.ids)] = 1
        return ids, mask

    def decode(self, sequences):
        texts = self.tokenizer.decode_batch([list(map(int, row)) for row in sequences], skip_special_tokens=True)
        return [_clean_up_tokenization(t) if self.clean_up else t for t in texts]


def check_texts(texts):
    """A request's texts as a list of str; DecodingError for an empty batch or non-text."""
    if isinstance(texts, (str, bytes)):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise DecodingError(f"{TEXT_INPUT} must be a string or a list of strings, got {type(texts).__name__}")
    out = []
    for text in texts:
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise DecodingError("a text is not UTF-8") from None
        if not isinstance(text, str):
            raise DecodingError(f"{TEXT_INPUT} must be a string or a list of strings, got {type(text).__name__}")
        out.append(text)
    if not out:
        raise DecodingError("no text: send at least one string")
    return out
