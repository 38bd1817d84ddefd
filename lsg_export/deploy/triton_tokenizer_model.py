"""The model.py of the `<name>-tokenizer` model that `lsg-export deploy` writes in front of an encoder's graph
(Triton's python backend): BYTES `text`, one string per row -> the graph's token inputs, by text_tokens.py (copied
beside this file, which Triton's python backend puts on sys.path; `lsg-export serve` runs the same functions).

Not imported by lsg_export: it runs inside Triton only (triton_python_backend_utils is Triton's), with
`tokenizers` and `numpy` installed in the serving image (pip install tokenizers numpy).
The model's parameters (config.pbtxt): max_length (the export's sequence length); its outputs are the graph's
token inputs. A text longer than max_length tokens fails its request with one line, never truncated.
"""
import json
from pathlib import Path

import triton_python_backend_utils as pb_utils
from text_tokens import TextError, encode, load_tokenizer, texts_of


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.seq = int(config["parameters"]["max_length"]["string_value"])
        self.outputs = [output["name"] for output in config["output"]]
        self.dtypes = {name: pb_utils.triton_string_to_numpy(output["data_type"])
                       for name, output in zip(self.outputs, config["output"])}
        self.tokenizer = load_tokenizer(Path(args["model_repository"]) / args["model_version"])

    def execute(self, requests):
        responses = []
        for request in requests:  # one response per request, an error one for a bad text
            try:
                texts = texts_of(pb_utils.get_input_tensor_by_name(request, "text").as_numpy())
                arrays = encode(self.tokenizer, texts, self.seq, self.outputs, self.dtypes)
            except TextError as error:
                responses.append(pb_utils.InferenceResponse(error=_invalid(f"input text: {error}")))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(name, arrays[name]) for name in self.outputs]))
        return responses


def _invalid(message):
    """An INVALID_ARG error (HTTP 400) where the python backend has error codes (Triton 24.01 on), else a plain one."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
