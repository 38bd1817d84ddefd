"""OpenAI-compatible routes of `lsg-export serve`: POST /v1/embeddings, GET /v1/models and /v1/models/{id},
also under /openai/v1 (KServe's OpenAI prefix).

Written here rather than taken from kserve.protocol.rest.openai: KServe 0.21's OpenAI package imports
its request and response types from vLLM. Every bad request gets one line in OpenAI's error object
({"error": {"message", "type", "param", "code"}}) with a 4xx status, and the server keeps serving.
"""
import asyncio
import base64
import time

import orjson
from starlette.responses import Response

from .embeddings import EMBEDDING_OUTPUT, Embedder, EmbeddingInputError, ServingOptions, TokenBudgetBatcher
from .http_limits import error_body, metrics

PREFIXES = ("/v1", "/openai/v1")
ENCODINGS = ("float", "base64")


class RequestError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def _json(content, status=200):
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


class OpenAIRoutes:
    """The routes over a KServe model registry of LSGModels (server.py)."""

    def __init__(self, registry):
        self.registry = registry
        self.created = int(time.time())
        self._services = {}  # model name -> (Embedder, TokenBudgetBatcher), made in the serving process

    def _model(self, name):
        if not isinstance(name, str) or not name:
            raise RequestError(400, "model is missing: give the served model's name "
                                    f"({', '.join(self.registry.get_models())})")
        model = self.registry.get_model(name)
        if model is None:
            raise RequestError(404, f"model {name!r} does not exist: this server serves "
                                    f"{', '.join(self.registry.get_models())}")
        return model

    def _service(self, model):
        if model.name not in self._services:
            embedder = Embedder(model, getattr(model, "serving", ServingOptions()))
            batcher = TokenBudgetBatcher(embedder.run, embedder.options.max_batch_tokens, metrics(), embedder.group)
            self._services[model.name] = embedder, batcher
        return self._services[model.name]

    async def embeddings(self, request):
        try:
            return _json(await self._embeddings(request))
        except RequestError as error:
            return _json(error_body(request.url.path, error.status, str(error)), error.status)

    async def _embeddings(self, request):
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as error:
            raise RequestError(400, f"the request body is not JSON ({error})") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object with model and input")
        model = self._model(body.get("model"))
        embedder, batcher = self._service(model)
        if not embedder.available:
            raise RequestError(400, f"model {model.name} has no {EMBEDDING_OUTPUT} output: export it with "
                                    f"`lsg-export onnx --pooling mean|cls|max` to serve embeddings")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ENCODINGS:
            raise RequestError(400, f"encoding_format {encoding!r} is not one of {', '.join(ENCODINGS)}")
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != embedder.dimensions:
            raise RequestError(400, f"dimensions {dimensions!r}: model {model.name} gives {embedder.dimensions} "
                                    f"(only its own size is accepted)")
        if "input" not in body:
            raise RequestError(400, "input is missing: a string or a list of strings")
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(None, embedder.token_rows, body["input"])
        except EmbeddingInputError as error:
            raise RequestError(400, str(error)) from None
        embeddings = await batcher.embed(rows)
        tokens = sum(map(len, rows))
        if encoding == "base64":  # little-endian float32 bytes, as the openai client decodes them
            data = [base64.b64encode(e.astype("<f4").tobytes()).decode() for e in embeddings]
        else:
            data = list(embeddings)
        return {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": e}
                                           for i, e in enumerate(data)],
                "model": model.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def _card(self, model):
        return {"id": model.name, "object": "model", "created": self.created, "owned_by": "lsg-export",
                "max_model_len": model.seq}

    async def models(self, request):
        return _json({"object": "list", "data": [self._card(m) for m in self.registry.get_models().values()]})

    async def model(self, request):
        try:
            return _json(self._card(self._model(request.path_params["model"])))
        except RequestError as error:
            return _json(error_body(request.url.path, error.status, str(error)), error.status)


def register_openai_routes(app, registry):
    """Adds the routes to the FastAPI app; call before KServe registers its v1 protocol's /v1/models, which
    would otherwise answer GET /v1/models in its own format."""
    routes = OpenAIRoutes(registry)
    for prefix in PREFIXES:
        app.add_route(f"{prefix}/embeddings", routes.embeddings, methods=["POST"])
        app.add_route(f"{prefix}/models", routes.models, methods=["GET"])
        app.add_route(f"{prefix}/models/{{model}}", routes.model, methods=["GET"])
    return routes


def limits_middleware(registry):
    """(RequestLimits, its options) from the served model's ServingOptions."""
    from .http_limits import RequestLimits

    options = next((getattr(m, "serving", None) for m in registry.get_models().values()), None) or ServingOptions()
    return RequestLimits, {"max_request_bytes": options.max_request_bytes,
                           "max_concurrent_requests": options.max_concurrent_requests}

