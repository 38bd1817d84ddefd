"""Triton python-backend model of a summariser: text in, summary out (copied as REPO/<name>/1/model.py).

Business-logic scripting: it tokenizes, runs the encoder and decoder graph models of the repository through
pb_utils.InferenceRequest, decodes with decoding.py (copied beside it: numpy and `tokenizers` only, as Triton's
python backend has neither torch nor transformers; the same loop as `lsg-export serve`) and detokenizes.

Inputs: `text_input` or `text` (BYTES, one string per row; the generate extension's field or the v2 input of
`lsg-export serve`), optional `max_new_tokens` and `num_beams` (INT32 [1]) or the same request parameters
(the generate extension's "parameters"). Output: `text_output` (BYTES, one summary per row). The graph models'
names and the longest input come from config.pbtxt's parameters."""
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))  # decoding.py, copied beside this file
from decoding import (REQUEST_PARAMETERS, TEXT_INPUT, TEXT_OUTPUT, DecodingError,  # noqa: E402
                      GenerationSettings, GraphDecoder, TextCodec, generate)

TEXT = "text"


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        folder = Path(__file__).resolve().parent
        self.models = json.loads(parameters["graph_models"])  # graph role -> Triton model name
        self.settings = GenerationSettings.from_folder(folder).check()
        self.codec = TextCodec(folder, self.settings.pad_token_id, int(parameters["max_tokens"]))
        layers, heads, head_dim = (int(parameters[key]) for key in ("layers", "heads", "head_dim"))
        self.decoder = GraphDecoder(self._run, layers, heads, head_dim, merged="decoder_merged" in self.models)

    def _run(self, graph, feeds, outputs=None):
        """One BLS request to the graph model of `graph`: {output name: array}."""
        inputs = [pb_utils.Tensor(name, np.ascontiguousarray(array)) for name, array in feeds.items()]
        request = pb_utils.InferenceRequest(model_name=self.models[graph], inputs=inputs,
                                            requested_output_names=outputs or self._outputs(graph))
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.models[graph]}: {response.error().message()}")
        return {tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()}

    def _outputs(self, graph):
        names = ["logits"]
        for i in range(self.decoder.layers):
            sides = ("decoder",) if graph == "decoder_with_past" else ("decoder", "encoder")
            names += [f"present.{i}.{side}.{kind}" for side in sides for kind in ("key", "value")]
        return names

    def _encode(self, input_ids, attention_mask):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self._run("encoder", feeds, ["last_hidden_state"])["last_hidden_state"]

    def _summarise(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, TEXT_INPUT)
        if tensor is None:
            tensor = pb_utils.get_input_tensor_by_name(request, TEXT)
        if tensor is None:
            raise DecodingError(f"no input: send {TEXT_INPUT} (or {TEXT}), BYTES, one string per row")
        texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in tensor.as_numpy().reshape(-1)]
        overrides = json.loads(request.parameters() or "{}")
        overrides = {key: value for key, value in overrides.items() if key in REQUEST_PARAMETERS}
        for name in REQUEST_PARAMETERS:
            given = pb_utils.get_input_tensor_by_name(request, name)
            if given is not None:
                overrides[name] = int(given.as_numpy().reshape(-1)[0])
        settings = self.settings.override(**overrides)
        if not texts:
            raise DecodingError("no text: send at least one string")
        ids, mask = self.codec.encode(texts)
        summaries = self.codec.decode(generate(self._encode, self.decoder, ids, mask, settings))
        return np.array([s.encode("utf-8") for s in summaries], dtype=np.object_)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                output = pb_utils.Tensor(TEXT_OUTPUT, self._summarise(request))
                responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            except DecodingError as error:  # the request's fault: one line back, the model keeps serving
                code = getattr(pb_utils.TritonError, "INVALID_ARG", None)  # python backends before 23.xx: none
                error = pb_utils.TritonError(str(error), code) if code is not None else pb_utils.TritonError(str(error))
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses
