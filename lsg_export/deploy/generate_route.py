"""The Open Inference Protocol's generate extension on `lsg-export serve`, as Triton defines it:

    POST /v2/models/<name>/generate   {"text_input": "...", "parameters": {"max_new_tokens": 64, "num_beams": 4}}
    -> 200 {"model_name": "<name>", "model_version": "1", "text_output": "..."}   (an "id" is echoed back)
    -> 4xx {"error": "<one line>"}   (400 bad request, 404 unknown model)

`text_input` may also be a list of strings (then `text_output` is a list). Only models that generate text
(SummariserModel) answer it."""
import asyncio
import json

from fastapi import Request
from fastapi.responses import JSONResponse

from .decoding import REQUEST_PARAMETERS, TEXT_INPUT, TEXT_OUTPUT

ROUTE = "/v2/models/{model_name}/generate"
IGNORED = {"stream": False}  # parameters Triton's clients send with their default value


def _error(status, message):
    return JSONResponse(status_code=status, content={"error": message})


def register_generate_route(app, dataplane):
    """Add the generate route to KServe's FastAPI app, next to its v2 routes."""
    from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady

    async def generate(model_name: str, request: Request):
        try:
            model = await dataplane.get_model(model_name)
        except ModelNotFound:
            return _error(404, f"Model with name {model_name} does not exist.")
        except ModelNotReady:
            return _error(503, f"Model with name {model_name} is not ready.")
        if not hasattr(model, "summarise"):
            return _error(400, f"model {model_name} does not generate text (an encoder): POST /v2/models/"
                               f"{model_name}/infer")
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as error:
            return _error(400, f"the body is not JSON ({str(error).splitlines()[0]})")
        if not isinstance(body, dict) or TEXT_INPUT not in body:
            return _error(400, f"the body must be a JSON object with \"{TEXT_INPUT}\" (a string) and optional "
                               f"\"parameters\" ({', '.join(REQUEST_PARAMETERS)})")
        unknown = sorted(set(body) - {TEXT_INPUT, "parameters", "id"})
        if unknown:
            return _error(400, f"unknown field {', '.join(unknown)}: the body takes \"{TEXT_INPUT}\", \"parameters\" "
                               f"and \"id\"")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            return _error(400, "\"parameters\" must be a JSON object")
        for key, default in IGNORED.items():
            if parameters.get(key, default) != default:
                return _error(400, f"parameter {key}={parameters[key]!r} is not supported")
            parameters.pop(key, None)
        try:
            texts = await asyncio.get_running_loop().run_in_executor(None, model.summarise, body[TEXT_INPUT],
                                                                     parameters)
        except InvalidInput as error:
            return _error(400, str(error))
        answer = {"model_name": model_name, "model_version": "1",
                  TEXT_OUTPUT: texts if isinstance(body[TEXT_INPUT], list) else texts[0]}
        if "id" in body:
            answer["id"] = body["id"]
        return answer

    app.add_api_route(ROUTE, generate, methods=["POST"])
