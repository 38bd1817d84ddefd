"""Text -> the token inputs of an export: the one tokenizer of `lsg-export serve` and of the Triton python-backend
tokenizer model that `lsg-export deploy` writes in front of an encoder (it copies this file beside that model.py,
so it imports nothing from lsg_export: tokenizers, numpy and the standard library only).

    tokenizer = load_tokenizer(folder)                    # tokenizer.json and its special-token files
    arrays = encode(tokenizer, ["a text", ...], 4096, ["input_ids", "attention_mask"])

A text longer than the export's sequence length is refused (TextError), never truncated.
"""
import json
from pathlib import Path

import numpy as np

TEXT_INPUT = "text"  # the BYTES input of serve and of the Triton ensemble: one string per row
TOKENIZER_FILE = "tokenizer.json"
# the files load_tokenizer reads (the deploy copies them beside the tokenizer model)
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json", "config.json")
COLUMNS = ("input_ids", "attention_mask", "token_type_ids")  # the graph inputs text can fill


def fills(names):
    """Whether text can fill the graph inputs `names` (input_ids, plus attention_mask / token_type_ids)."""
    return "input_ids" in names and all(name in COLUMNS for name in names)


class TextError(ValueError):
    """A request's text that cannot be encoded; its message is the one line the client gets."""


def load_tokenizer(folder):
    """tokenizer.json of `folder` through `tokenizers` (no torch / transformers import): no truncation, padding to
    the longest row with the pad token of tokenizer_config.json / special_tokens_map.json, else config.json's
    pad_token_id, else id 0."""
    from tokenizers import Tokenizer

    folder = Path(folder)
    tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    tokenizer.no_truncation()
    special = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        special.update(_json(folder / name))
    pad = special.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    pad_id = tokenizer.token_to_id(pad) if pad else None
    if pad_id is None:
        pad_id = _json(folder / "config.json").get("pad_token_id") or 0
        pad = tokenizer.id_to_token(pad_id)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad)
    return tokenizer


def _json(path):
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def texts_of(array):
    """The strings of a BYTES tensor: one per row, shape [batch] (or [batch, 1]); TextError otherwise (its
    message goes after "input text: ")."""
    array = np.asarray(array, dtype=object)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise TextError(f"shape {list(array.shape)}, expected [batch]: one string per row")
    if array.shape[0] == 0:
        raise TextError("empty: send at least one string")
    try:
        return [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in array]
    except UnicodeDecodeError as error:
        raise TextError(f"not UTF-8 ({error})") from None


def encode(tokenizer, texts, seq, names, dtypes=None):
    """{name: (batch, longest row) array} for `names` (among COLUMNS), padded to the longest text.

    seq: the longest the export accepts, in tokens with the special ones: a longer text is a TextError.
    dtypes: {name: numpy dtype} of the graph inputs (default int64)."""
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        raise TextError(f"text cannot fill the input {', '.join(unknown)}")
    encodings = tokenizer.encode_batch(list(texts))
    for i, encoding in enumerate(encodings):
        length = sum(encoding.attention_mask)
        if length > seq:
            raise TextError(f"text {i} is {length} tokens long, longer than {seq}, the longest this export accepts")
    columns = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
               "token_type_ids": [e.type_ids for e in encodings]}
    dtypes = dtypes or {}
    return {name: np.asarray(columns[name], dtype=dtypes.get(name, np.int64)) for name in names}
