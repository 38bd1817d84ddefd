"""`lsg-export serve` of an encoder-decoder export: text in, summary out, on ONNX Runtime.

The model answers v2 `infer` with a `text` input (BYTES, one string per row) and a `text_output` output, and the
generate extension's route (generate_route.py). Generation is decoding.py's loop, the one the Triton repository's
python-backend model runs; request parameters `max_new_tokens` and `num_beams` override the export's
generation_config.json. A bad request is InvalidInput (HTTP 400) with one line; the server keeps serving."""
import asyncio
import threading
import uuid

import numpy as np

from .decoding import REQUEST_PARAMETERS, TEXT_INPUT, TEXT_OUTPUT, DecodingError, GraphDecoder, TextCodec, \
    check_texts, generate
from .kserve import import_kserve

kserve = import_kserve()
from kserve.errors import InvalidInput  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferResponse  # noqa: E402

TEXT = "text"  # the v2 infer input, as for encoders


class SummariserModel(kserve.Model):
    """An encoder-decoder export: ONNX Runtime sessions of its graphs, its tokenizer, decoding.py's loop."""

    has_text = True

    def __init__(self, name, export):
        super().__init__(name)
        self.export = export
        self.seq = export.seq
        self._load_lock = threading.Lock()
        self.load()

    def load(self):
        import onnxruntime as ort

        from ..ops.session import explain_missing_ops, session_options_with_ops

        options = ort.SessionOptions()
        if self.export.needs_custom_ops:
            options = session_options_with_ops(options)
        with explain_missing_ops():
            self._sessions = {role: ort.InferenceSession(str(self.export.path / graph.entry.file), options,
                                                         providers=["CPUExecutionProvider"])
                              for role, graph in self.export.graphs.items()}
        settings = self.export.settings
        self._codec = TextCodec(self.export.path, settings.pad_token_id, self.seq)
        self._codec_lock = threading.Lock()  # a Tokenizer is not to be shared by threads
        self._decoder = GraphDecoder(self._run, *self.export.decoder_shape, merged=self.export.merged)
        self.ready = True
        return self.ready

    def __getstate__(self):  # pickled into `--workers` processes: loaded again there, at the first request
        state = dict(self.__dict__)
        for key in ("_sessions", "_codec", "_codec_lock", "_decoder", "_load_lock"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._sessions = None
        self._load_lock = threading.Lock()

    def _run(self, graph, feeds):
        session = self._sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, {i.name: feeds[i.name] for i in session.get_inputs()})))

    def _encode(self, input_ids, attention_mask):
        return self._sessions["encoder"].run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    def get_input_types(self):
        return [{"name": TEXT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self):
        return [{"name": TEXT_OUTPUT, "datatype": "BYTES", "shape": [-1]}]

    def summarise(self, texts, parameters=None):
        """Summaries of `texts` (str or list); parameters: {max_new_tokens, num_beams}. InvalidInput for bad input."""
        if self._sessions is None:
            with self._load_lock:
                if self._sessions is None:
                    self.load()
        parameters = dict(parameters or {})
        unknown = sorted(set(parameters) - set(REQUEST_PARAMETERS))
        if unknown:
            raise InvalidInput(f"unknown parameter {', '.join(unknown)}: {self.name} takes "
                               f"{', '.join(REQUEST_PARAMETERS)}")
        try:
            settings = self.export.settings.override(**parameters)
            with self._codec_lock:
                ids, mask = self._codec.encode(check_texts(texts))
            sequences = generate(self._encode, self._decoder, ids, mask, settings)
            with self._codec_lock:
                return self._codec.decode(sequences)
        except DecodingError as error:
            raise InvalidInput(str(error)) from None

    def _texts(self, request):
        inputs = list(request.inputs or [])
        names = [i.name for i in inputs]
        if len(inputs) != 1 or names[0] not in (TEXT, TEXT_INPUT):
            raise InvalidInput(f"{self.name} takes one input, {TEXT}: BYTES [batch] (the texts to summarise); "
                               f"got {', '.join(names) or 'none'}")
        tensor = inputs[0]
        if tensor.datatype != "BYTES" or len(tensor.shape) != 1:
            raise InvalidInput(f"input {tensor.name} has datatype {tensor.datatype} and shape {list(tensor.shape)}, "
                               f"expected BYTES [batch]: one string per row")
        try:
            return list(tensor.as_numpy().reshape(-1))
        except (ValueError, TypeError) as error:
            raise InvalidInput(f"input {tensor.name}: not {tensor.shape[0]} strings ({error})") from None

    async def predict(self, payload, headers=None, response_headers=None):
        if not hasattr(payload, "inputs"):
            raise InvalidInput(f"this server speaks the Open Inference Protocol (v2): POST /v2/models/{self.name}/"
                               f"infer with {{\"inputs\": [...]}}, or /generate with {{\"{TEXT_INPUT}\": ...}}")
        texts = self._texts(payload)
        parameters = {k: v for k, v in (payload.parameters or {}).items() if k in REQUEST_PARAMETERS}
        summaries = await asyncio.get_running_loop().run_in_executor(None, self.summarise, texts, parameters)
        array = np.array([s.encode() for s in summaries], dtype=np.object_)
        output = InferOutput(TEXT_OUTPUT, [len(summaries)], "BYTES")
        output.set_data_from_numpy(array, binary_data=bool(payload.from_grpc))
        return InferResponse(payload.id or str(uuid.uuid4()), self.name, [output],
                             use_binary_outputs=payload.use_binary_outputs)
