"""`lsg-export serve`: an export folder on ONNX Runtime behind KServe's ModelServer.

Open Inference Protocol (KServe v2) over HTTP and gRPC, with the model name, inputs and outputs of the
Triton repository `lsg-export deploy` writes (a tritonclient client works against both), plus a
`text` input (BYTES, one string per row) tokenized with the export's tokenizer.json. Every request is
checked before it reaches ONNX Runtime; a bad one gets InvalidInput (HTTP 400 / gRPC INVALID_ARGUMENT)
with a line saying what is wrong, and the server keeps serving.
"""
import asyncio
import socket
import threading
import uuid

from tritonclient.utils import triton_to_np_dtype

from ..errors import LSGExportError
from .folder import open_export
from .kserve import import_kserve
from .text_tokens import TEXT_INPUT, TextError, encode, fills, load_tokenizer, texts_of

kserve = import_kserve()
from kserve.errors import InvalidInput  # noqa: E402
from kserve.protocol.grpc.server import GRPCServer  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferResponse  # noqa: E402
from kserve.protocol.rest.server import RESTServer  # noqa: E402

class LSGModel(kserve.Model):
    """An exported LSG model: an ONNX Runtime session of model.onnx (custom ops registered when the graph needs
    them), and one of model_short.onnx where the export has it (onnx/short_graph.py), which runs the requests
    whose rows are all at most `short_limit` tokens long: the same outputs at their own length's cost."""

    def __init__(self, name, export):
        super().__init__(name)
        self.export = export
        self.seq = export.seq
        config = export.config
        # id ranges, checked so that an out-of-range id is a 400, not an ONNX Runtime Gather failure
        self.limits = {"input_ids": config.get("vocab_size"), "token_type_ids": config.get("type_vocab_size"),
                       "attention_mask": 2}
        self.has_text = export.tokenizer_file is not None and fills(self._names())
        self.short_limit = (export.meta.get("short_graph") or {}).get("max_tokens", 0)
        self.load()

    def load(self):
        import onnxruntime as ort

        from ..ops.session import explain_missing_ops, session_options_with_ops

        options = ort.SessionOptions()
        if self.export.needs_custom_ops:
            options = session_options_with_ops(options)
        with explain_missing_ops():
            self._session = ort.InferenceSession(str(self.export.model_file), options,
                                                 providers=["CPUExecutionProvider"])
        short = self.export.meta.get("short_graph")
        self._short_session = ort.InferenceSession(str(self.export.path / short["file"]),
                                                   providers=["CPUExecutionProvider"]) if short else None
        self._tokenizer = self._load_tokenizer()
        self._tokenizer_lock = threading.Lock()
        self.ready = True
        return self.ready

    def _load_tokenizer(self):
        """tokenizer.json through `tokenizers` (text_tokens.load_tokenizer: the Triton tokenizer model's too)."""
        return load_tokenizer(self.export.path) if self.has_text else None

    # pickled into `--workers` processes: the session is re-created there
    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("_session", "_short_session", "_tokenizer", "_tokenizer_lock", "_load_lock"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        # loaded at the first request: KServe kills a worker that does not answer its liveness ping
        # within 5 s of starting, and unpickling happens before that ping is served
        self.__dict__.update(state)
        self._session = None
        self._load_lock = threading.Lock()

    def _ensure_loaded(self):
        if self._session is None:
            with self._load_lock:
                if self._session is None:
                    self.load()

    def _names(self):
        return [spec.name for spec in self.export.inputs]

    def session(self, length):
        """The session for rows of at most `length` tokens: model_short.onnx up to short_limit, else model.onnx."""
        self._ensure_loaded()
        return self._short_session if length <= self.short_limit else self._session

    def get_input_types(self):
        types = [spec.metadata() for spec in self.export.inputs]
        if self.has_text:
            types.append({"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]})
        return types

    def get_output_types(self):
        return [spec.metadata() for spec in self.export.outputs]

    def _signature(self):
        text = f" (or {TEXT_INPUT}: BYTES [batch])" if self.has_text else ""
        return ", ".join(f"{s.name}: {s.datatype} {list(s.shape)}" for s in self.export.inputs) + text

    # --- request checks ------------------------------------------------------------------------

    def feeds(self, request):
        """The ONNX Runtime feeds of a v2 InferRequest, or InvalidInput saying what is wrong."""
        inputs = list(request.inputs or [])
        if not inputs:
            raise InvalidInput(f"the request has no inputs; {self.name} takes {self._signature()}")
        names = [i.name for i in inputs]
        expected = self._names()
        known = expected + ([TEXT_INPUT] if self.has_text else [])
        for name in names:
            if name not in known:
                hint = f"; {TEXT_INPUT} needs a tokenizer.json in the export" if name == TEXT_INPUT else ""
                raise InvalidInput(f"unknown input '{name}': {self.name} takes {self._signature()}{hint}")
        if len(set(names)) != len(names):
            raise InvalidInput(f"an input is given twice: {', '.join(names)}")
        if TEXT_INPUT in names:
            if len(names) > 1:
                raise InvalidInput(f"give either {TEXT_INPUT} or token inputs ({', '.join(expected)}), not both")
            return self._tokenize(inputs[0])
        missing = [name for name in expected if name not in names]
        if missing:
            raise InvalidInput(f"missing input {', '.join(missing)}: {self.name} takes {self._signature()}")
        specs = {spec.name: spec for spec in self.export.inputs}
        arrays = {}
        for tensor in inputs:
            spec = specs[tensor.name]
            if tensor.datatype != spec.datatype:
                raise InvalidInput(f"input {tensor.name} has datatype {tensor.datatype}, expected {spec.datatype}")
            shape = list(tensor.shape)
            if len(shape) != len(spec.shape):
                raise InvalidInput(f"input {tensor.name} has shape {shape} (rank {len(shape)}), expected rank "
                                   f"{len(spec.shape)}: {list(spec.shape)}")
            if any(want != -1 and got != want for got, want in zip(shape, spec.shape)):
                raise InvalidInput(f"input {tensor.name} has shape {shape}, expected {list(spec.shape)}")
            try:
                arrays[tensor.name] = tensor.as_numpy()
            except (ValueError, TypeError) as error:
                raise InvalidInput(f"input {tensor.name}: its data does not fit shape {shape} and datatype "
                                   f"{tensor.datatype} ({error})") from None
        shapes = {name: list(array.shape) for name, array in arrays.items()}
        if len({tuple(s) for s in shapes.values()}) > 1:
            raise InvalidInput("inputs of different shapes: " + ", ".join(f"{n} {s}" for n, s in shapes.items())
                               + " (every input needs one value per token)")
        return self._checked({name: arrays[name] for name in expected})

    def _checked(self, feeds):
        shape = next(iter(feeds.values())).shape
        if 0 in shape:
            raise InvalidInput(f"empty input (shape {list(shape)}): send at least one row of at least one token")
        if shape[-1] > self.seq:
            raise InvalidInput(f"sequence length {shape[-1]} is longer than {self.seq}, the longest this export "
                               f"accepts")
        for name, array in feeds.items():
            limit = self.limits.get(name)
            if limit and (array.min() < 0 or array.max() >= limit):
                raise InvalidInput(f"input {name} has values outside 0..{limit - 1} "
                                   f"(found {array.min()}..{array.max()})")
        return feeds

    def _tokenize(self, tensor):
        """The feeds of a text input, by text_tokens.encode: what the Triton repository's tokenizer model runs."""
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"input {TEXT_INPUT} has datatype {tensor.datatype}, "
                               f"expected BYTES (one string per row)")
        if len(tensor.shape) != 1:
            raise InvalidInput(f"input {TEXT_INPUT} has shape {list(tensor.shape)}, expected [batch]: one string "
                               f"per row")
        try:
            texts = texts_of(tensor.as_numpy().reshape(-1))
        except (ValueError, TypeError) as error:  # TextError is a ValueError
            raise InvalidInput(f"input {TEXT_INPUT}: {error}") from None
        dtypes = {spec.name: triton_to_np_dtype(spec.datatype) for spec in self.export.inputs}
        try:
            with self._tokenizer_lock:
                return encode(self._tokenizer, texts, self.seq, self._names(), dtypes)
        except TextError as error:
            raise InvalidInput(str(error)) from None

    def _requested(self, request):
        outputs = [spec.name for spec in self.export.outputs]
        wanted = [o.name for o in request.request_outputs or []]
        unknown = [name for name in wanted if name not in outputs]
        if unknown:
            raise InvalidInput(f"unknown output {', '.join(unknown)}: {self.name} outputs {', '.join(outputs)}")
        return wanted or outputs

    # --- inference ----------------------------------------------------------------------------

    def run(self, request):
        """Check, tokenize if needed and run one request (in a worker thread); returns {output: array}."""
        self._ensure_loaded()
        outputs = self._requested(request)
        feeds = self.feeds(request)
        return dict(zip(outputs, self.session(next(iter(feeds.values())).shape[-1]).run(outputs, feeds)))

    async def predict(self, payload, headers=None, response_headers=None):
        if not hasattr(payload, "inputs"):  # a v1 (`instances`) request
            raise InvalidInput("this server speaks the Open Inference Protocol (v2): POST /v2/models/"
                               f"{self.name}/infer with {{\"inputs\": [...]}}")
        results = await asyncio.get_running_loop().run_in_executor(None, self.run, payload)
        from tritonclient.utils import np_to_triton_dtype

        outputs = []
        for name, array in results.items():
            output = InferOutput(name, list(array.shape), np_to_triton_dtype(array.dtype), data=array)
            if payload.from_grpc:  # raw bytes now: kserve's to_grpc() tests an array's truth value otherwise
                output.set_data_from_numpy(array, binary_data=True)
            outputs.append(output)
        return InferResponse(payload.id or str(uuid.uuid4()), self.name, outputs,
                             use_binary_outputs=payload.use_binary_outputs, requested_outputs=payload.request_outputs)


class LocalModelServer(kserve.ModelServer):
    """KServe's ModelServer listening on one address (KServe binds every interface: 0.0.0.0 and [::])."""

    def __init__(self, host, **kwargs):
        super().__init__(**kwargs)
        self.host = host

    def start(self, models):
        from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
        from kserve.model_server import args
        from kserve.protocol.rest.multiprocess.server import RESTServerMultiProcess

        self._register_and_check_atleast_one_model_is_ready(models)
        options = dict(workers=self.workers, grace_period=self.grace_period, event_loop=self.event_loop,
                       timeout_keep_alive=self.timeout_keep_alive)
        rest = _RESTServer(self.host, FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension,
                           self.http_port, **options)
        if self.workers > 1:
            self._rest_multiprocess_server = RESTServerMultiProcess(
                FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port, **options)
            self._rest_multiprocess_server._rest_server = rest  # what its worker processes run
            self.servers.append(self._rest_multiprocess_server.start())
        else:
            self._rest_server = rest
            self.servers.append(rest.start())
        if self.enable_grpc:
            self._grpc_server = _GRPCServer(self.host, self.grpc_port, self.dataplane, self.model_repository_extension,
                                            kwargs=vars(args), grace_period=self.grace_period)
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


class _RESTServer(RESTServer):
    """KServe's REST server on `host`, reading v2 request bodies as JSON whatever their Content-Type."""

    def __init__(self, host, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.host = host

    def _add_middlewares(self, app):
        super()._add_middlewares(app)
        app.add_middleware(JSONBodyByDefault)
        from .openai_api import limits_middleware
        limits, options = limits_middleware(self.dataplane.model_registry)
        app.add_middleware(limits, **options)  # outermost: 413 / 429 before anything reads the body

    def _register_endpoints(self, app):
        from .generate_route import register_generate_route
        from .openai_api import register_openai_routes
        register_openai_routes(app, self.dataplane.model_registry)  # first: KServe's v1 has a /v1/models
        super()._register_endpoints(app)
        register_generate_route(app, self.dataplane)


class JSONBodyByDefault:
    """ASGI middleware: an infer request without Inference-Header-Content-Length is JSON.

    The v2 protocol's body is a JSON object, followed by binary tensors only when that header gives the
    JSON's length; Triton reads it so whatever the Content-Type. FastAPI parses JSON only when the
    Content-Type says so, and tritonclient.http sends none with JSON-only tensors (binary_data=False)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith("/infer"):
            if not any(k.lower() == b"inference-header-content-length" for k, _ in scope["headers"]):
                headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
                scope = dict(scope, headers=headers + [(b"content-type", b"application/json")])
        await self.app(scope, receive, send)


class _GRPCServer(GRPCServer):
    """KServe's gRPC server bound to `host`."""

    def __init__(self, host, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._host = host

    async def start(self, max_workers):
        from concurrent import futures

        from grpc import aio
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
        from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
        from kserve.protocol.grpc.servicer import InferenceServicer

        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
            options=[("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                     ("grpc.max_receive_message_length", self._kwargs.get("grpc_max_receive_message_length"))])
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self._data_plane, self._model_repository_extension), self._server)
        self._server.add_insecure_port(_address(self._host, self._port))
        await self._server.start()
        await self._server.wait_for_termination()


def _address(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_port(host, port, what):
    """One clear line for a port that is taken, before any server starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise LSGExportError(f"cannot listen on {_address(host, port)} ({what}): {error.strerror}") from None


def make_model(export, name=None, allow_unvalidated=False):
    """The LSGModel of the export folder `export`, or its SummariserModel for an encoder-decoder export."""
    from .folder import check_name, read_meta
    from .seq2seq_export import is_seq2seq, open_seq2seq_export

    if is_seq2seq(read_meta(export)):
        from .summariser import SummariserModel
        folder = open_seq2seq_export(export, allow_unvalidated)
        return SummariserModel(check_name(name) if name else folder.default_name(), folder)
    folder = open_export(export, allow_unvalidated)
    return LSGModel(check_name(name) if name else folder.default_name(), folder)


def serve(model, *, host="127.0.0.1", port=8080, grpc_port=8081, workers=1, serving=None):
    """Serve an LSGModel until SIGINT / SIGTERM (blocking); `serving`: an embeddings.ServingOptions."""
    from .embeddings import ServingOptions

    model.serving = (serving or ServingOptions()).check()
    if workers < 1:
        raise LSGExportError(f"--workers must be >= 1, got {workers}")
    if port == grpc_port:
        raise LSGExportError(f"--port and --grpc-port are both {port}")
    check_port(host, port, "HTTP")
    check_port(host, grpc_port, "gRPC")
    LocalModelServer(host, http_port=port, grpc_port=grpc_port, workers=workers).start([model])
