"""Sentence embeddings of an export with a `sentence_embedding` output, batched by a token budget.

`Embedder` checks and tokenizes inputs and runs rows of token ids through ONNX Runtime (LSGModel.session: rows of
at most two LSG blocks through model_short.onnx where the export has it, so a row costs its own length). A
`TokenBudgetBatcher` packs the rows of concurrent requests into shared runs: rows sorted by length and cut into
batches of one group (Embedder.group: rows whose padding to a common length costs little) whose padded size
(rows x longest row) stays within `max_batch_tokens`. The pooling in the graph covers real tokens only, so a
row's embedding does not depend on the rows it is packed with.
No web framework here: openai_api.py serves it over HTTP.
"""
import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

EMBEDDING_OUTPUT = "sentence_embedding"
MAX_INPUTS = 2048  # per request, as OpenAI's embeddings API
SHORT_STEP = 16  # the short graph's rows share a run within 16 tokens of length: about what a run's overhead costs


@dataclass(frozen=True)
class ServingOptions:
    """`lsg-export serve`'s limits, kept on the model so that they travel to `--workers` processes."""
    max_batch_tokens: int = 16384  # padded tokens per ONNX Runtime run; 0: no batching, each request alone
    max_concurrent_requests: int = 512  # POST requests in progress beyond which a request gets 429; 0: no limit
    truncate: bool = False  # cut an over-long input to the export's length instead of refusing it
    max_request_bytes: int = 16 * 2 ** 20  # a larger request body gets 413

    def check(self):
        from ..errors import LSGExportError
        for name in ("max_batch_tokens", "max_concurrent_requests"):
            if getattr(self, name) < 0:
                raise LSGExportError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.max_request_bytes < 1:
            raise LSGExportError(f"--max-request-bytes must be >= 1, got {self.max_request_bytes}")
        return self


class EmbeddingInputError(ValueError):
    """A request input the model cannot embed; its message is the one line the client gets."""


def pack(lengths, max_batch_tokens, group=None):
    """Batches of row indices, rows in increasing length: a batch holds rows of one group(length) (None: any
    lengths), and its rows x longest stay <= max_batch_tokens (a row longer than the budget runs alone)."""
    batches, batch = [], []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batch and ((len(batch) + 1) * lengths[index] > max_batch_tokens
                      or group and group(lengths[index]) != group(lengths[batch[0]])):
            batches.append(batch)
            batch = []
        batch.append(index)
    return batches + [batch] * bool(batch)


def export_outputs(export) -> dict:
    """The output specs by name of an encoder export; none for an encoder-decoder's (it has several graphs)."""
    return {spec.name: spec for spec in getattr(export, "outputs", ())}


class Embedder:
    """Tokenizes, checks and embeds for one LSGModel (server.py) with a sentence_embedding output."""

    def __init__(self, model, options):
        self.model = model
        self.options = options
        outputs = export_outputs(model.export)
        self.available = EMBEDDING_OUTPUT in outputs
        config = model.export.config
        width = outputs[EMBEDDING_OUTPUT].shape[-1] if self.available else -1
        self.dimensions = width if width > 0 else config.get("hidden_size") or config.get("dim")
        self.vocab_size = config.get("vocab_size")
        self.block = config.get("block_size")
        self.seq = model.seq
        self._tokenizer = None
        self._lock = threading.Lock()

    def group(self, length):
        """Rows of one group share runs (pack()): the short graph's by SHORT_STEP tokens (it costs the padded
        length), model.onnx's by LSG block count (it pads every row to whole blocks: such rows cost the same)."""
        if length <= self.model.short_limit:
            return "short", -(-length // SHORT_STEP)
        return "blocks", -(-length // self.block) if self.block else 0

    def _prepare(self):
        """The model's sessions (loaded late in `--workers` processes) and an unpadded copy of its tokenizer."""
        with self._lock:
            self.model._ensure_loaded()
            if self._tokenizer is None and self.model._tokenizer is not None:
                from tokenizers import Tokenizer

                tokenizer = Tokenizer.from_str(self.model._tokenizer.to_str())
                self.pad_id = tokenizer.padding["pad_id"]
                tokenizer.no_padding()
                if self.options.truncate:
                    tokenizer.enable_truncation(self.seq)
                self._tokenizer = tokenizer
            elif self._tokenizer is None:
                self.pad_id = self.model.export.config.get("pad_token_id") or 0

    def token_rows(self, inputs):
        """Lists of token ids of `inputs` (OpenAI's `input`: a string, a list of strings, a list of ids or a
        list of lists of ids); EmbeddingInputError for anything else, or too long without truncation."""
        self._prepare()
        items = [inputs] if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and all(
            _is_id(x) for x in inputs)) else inputs
        if not isinstance(items, list):
            raise EmbeddingInputError(f"input must be a string or a list of strings, got {_kind(inputs)}")
        if not items:
            raise EmbeddingInputError("input is an empty list: send at least one string")
        if len(items) > MAX_INPUTS:
            raise EmbeddingInputError(f"input has {len(items)} items, more than {MAX_INPUTS}")
        texts = {}
        rows = [None] * len(items)
        for i, item in enumerate(items):
            if isinstance(item, str):
                if not item:
                    raise EmbeddingInputError(f"input {i} is an empty string")
                texts[i] = item
            elif isinstance(item, list) and item and all(_is_id(x) for x in item):
                bad = [x for x in item if not 0 <= x < (self.vocab_size or 2 ** 63)]
                if bad:
                    raise EmbeddingInputError(f"input {i} has token ids outside 0..{self.vocab_size - 1} ({bad[0]})")
                rows[i] = item[:self.seq] if self.options.truncate else item
            elif isinstance(item, list) and not item:
                raise EmbeddingInputError(f"input {i} is an empty list of token ids")
            else:
                raise EmbeddingInputError(f"input {i} is {_kind(item)}, not a string or a list of token ids")
        if texts:
            if self._tokenizer is None:
                raise EmbeddingInputError("this export has no tokenizer.json: send token ids, not text")
            for i, encoding in zip(texts, self._tokenizer.encode_batch(list(texts.values()))):
                rows[i] = encoding.ids
        for i, row in enumerate(rows):
            if len(row) > self.seq:
                raise EmbeddingInputError(f"input {i} is {len(row)} tokens long, longer than {self.seq}, the longest "
                                          f"this export accepts (the server cuts it with --truncate)")
        return rows

    def run(self, rows):
        """(len(rows), dimensions) float32 embeddings of rows of token ids, padded together in one run (of the
        short graph when every row fits it)."""
        self._prepare()
        longest = max(map(len, rows))
        session = self.model.session(longest)
        ids = np.full((len(rows), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, :len(row)], mask[i, :len(row)] = row, 1
        columns = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feeds = {name: columns[name] for name in self.model._names()}
        return session.run([EMBEDDING_OUTPUT], feeds)[0].astype(np.float32, copy=False)


class _Request:
    """One request's rows in the batcher, and its answer as its rows come back."""

    def __init__(self, rows, future):
        self.rows, self.future = rows, future
        self.results = [None] * len(rows)
        self.left = len(rows)
        self.error = None


class TokenBudgetBatcher:
    """Runs the rows of concurrent requests in shared batches (one run at a time), or each request alone.

    Continuous batching: before every run, the rows waiting (those of requests that arrived meanwhile
    included) are packed (pack()), and the batch holding the oldest waiting row runs, so a row waits for at
    most the batches of rows older than itself. A request is answered as soon as its last row is back."""

    def __init__(self, run, max_batch_tokens, metrics=None, group=None):
        self.run = run
        self.max_batch_tokens = max_batch_tokens
        self.group = group
        self.metrics = metrics
        self._waiting = []  # (request, row index), oldest first
        self._wakeup = None
        self._task = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lsg-batch")

    async def embed(self, rows):
        loop = asyncio.get_running_loop()
        if not self.max_batch_tokens:
            self._observe(rows, len(rows) * max(map(len, rows)))
            return await loop.run_in_executor(None, self.run, rows)
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._loop())
        request = _Request(rows, loop.create_future())
        self._waiting.extend((request, i) for i in range(len(rows)))
        self._set_depth()
        self._wakeup.set()
        return await request.future

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            self._waiting = [(request, i) for request, i in self._waiting if not request.future.done()]  # gone
            if not self._waiting:
                continue
            lengths = [len(request.rows[i]) for request, i in self._waiting]
            batch = next(b for b in pack(lengths, self.max_batch_tokens, self.group) if 0 in b)
            taken = [self._waiting[k] for k in batch]
            for k in sorted(batch, reverse=True):
                del self._waiting[k]
            self._set_depth()
            rows = [request.rows[i] for request, i in taken]
            self._observe(rows, len(rows) * max(map(len, rows)))
            try:
                embeddings = await loop.run_in_executor(self._executor, self.run, rows)
            except Exception as error:  # handed to the requests of the batch
                embeddings = [None] * len(rows)
                for request, _ in taken:
                    request.error = error
            for (request, i), embedding in zip(taken, embeddings):
                request.results[i] = embedding
                request.left -= 1
                if request.left == 0 and not request.future.done():
                    if request.error is not None:
                        request.future.set_exception(request.error)
                    else:
                        request.future.set_result(np.stack(request.results))

    def _observe(self, rows, padded):
        if self.metrics:
            self.metrics.batch_tokens.observe(padded)
            self.metrics.batch_rows.observe(len(rows))

    def _set_depth(self):
        if self.metrics:
            self.metrics.queue_depth.set(len(self._waiting))


def _is_id(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value):
    return {dict: "an object", list: "a list", type(None): "null", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)
