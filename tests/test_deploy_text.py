"""`lsg-export deploy` of an encoder export with a tokenizer.json: the python-backend tokenizer model and the ensemble
that take `text` as `lsg-export serve` does (config.pbtxt parsed with Triton's model-config protobuf), and the
tokenizer model's model.py run on the written folder with a stand-in for Triton's triton_python_backend_utils (no
Triton server runs here; scripts/triton_text_check.py runs the repository in one), against serve's tokenization
and the export's own transformers tokenizer."""
import importlib.util
import json
import sys
import types

import numpy as np
import pytest

pytest.importorskip("kserve")
pytest.importorskip("tritonclient")
import _deploy_cases as cases

from lsg_export.deploy import text_tokens, triton
from lsg_export.deploy.repository import deploy


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return cases.tiny_export(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def repo(export, tmp_path_factory):
    return deploy(export, tmp_path_factory.mktemp("text-deploy") / "repo")


def read_config(repo, name):
    return triton.parse((repo.path / name / "config.pbtxt").read_text())


@pytest.mark.quick
def test_text_ensemble_configs(repo, export):
    pb = triton.model_config_pb2()
    name, tokenizer, ensemble = repo.name, f"{repo.name}-tokenizer", f"{repo.name}-text"
    assert repo.text_model == ensemble and repo.to_dict()["text_model"] == ensemble
    graph = read_config(repo, name)
    ids = ["input_ids", "attention_mask", "token_type_ids"]
    assert [t.name for t in graph.input] == ids and graph.max_batch_size == 8  # ids stay accepted, batched

    model = read_config(repo, tokenizer)
    assert (model.name, model.backend, model.max_batch_size) == (tokenizer, "python", 0)
    assert [(t.name, t.data_type, list(t.dims)) for t in model.input] == [("text", pb.TYPE_STRING, [-1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in model.output] == [(n, pb.TYPE_INT64, [-1, -1]) for n in ids]
    assert model.parameters["max_length"].string_value == str(cases.SEQ)
    assert [(g.kind, g.count) for g in model.instance_group] == [(pb.ModelInstanceGroup.KIND_CPU, 1)]
    assert not model.HasField("dynamic_batching")

    text = read_config(repo, ensemble)
    assert (text.name, text.platform, text.max_batch_size) == (ensemble, "ensemble", 0)
    assert [(t.name, t.data_type, list(t.dims)) for t in text.input] == [("text", pb.TYPE_STRING, [-1])]
    # the graph's outputs with their batch dim (the graph model's dims plus max_batch_size's)
    assert [(t.name, t.data_type, list(t.dims)) for t in text.output] == \
        [(t.name, t.data_type, [-1, *t.dims]) for t in graph.output] == [("logits", pb.TYPE_FP32, [-1, 2])]
    first, second = text.ensemble_scheduling.step
    assert (first.model_name, first.model_version, dict(first.input_map)) == (tokenizer, -1, {"text": "text"})
    assert dict(first.output_map) == {n: n for n in ids}
    assert (second.model_name, second.model_version) == (name, -1)
    assert dict(second.input_map) == {n: n for n in ids} and dict(second.output_map) == {"logits": "logits"}
    # every tensor between the steps: the tokenizer's [-1, -1] is the batching graph's [-1] with its batch dim
    for tensor in model.output:
        assert list(tensor.dims) == [-1, *next(t.dims for t in graph.input if t.name == tensor.name)]

    version = repo.path / tokenizer / "1"
    assert sorted(p.name for p in version.iterdir() if p.name != "__pycache__") == sorted(
        ["model.py", "text_tokens.py", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
         "config.json"])
    assert (version / "text_tokens.py").read_bytes() == open(text_tokens.__file__, "rb").read()
    assert (version / "tokenizer.json").read_bytes() == (export / "tokenizer.json").read_bytes()
    assert list((repo.path / ensemble / "1").iterdir()) == []  # Triton wants an ensemble's version folder, empty
    readme = (repo.path / "README.md").read_text()
    assert f'client.infer("{ensemble}"' in readme and "pip install tokenizers" in readme


class StandIn(types.ModuleType):
    """The part of Triton's triton_python_backend_utils that model.py uses."""

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, np.asarray(array)

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.output_tensors, self.error = output_tensors or [], error

    class TritonError:
        INVALID_ARG = 3

        def __init__(self, message, code=None):
            self._message, self.code = message, code

        def message(self):
            return self._message

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return next((t for t in request if t.name() == name), None)

    @staticmethod
    def triton_string_to_numpy(name):
        return {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32}[name]


@pytest.fixture
def tokenizer_model(repo, monkeypatch):
    """The written model.py, imported as Triton's python backend does (its version folder on sys.path)."""
    from google.protobuf import json_format
    name = f"{repo.name}-tokenizer"
    version = repo.path / name / "1"
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", StandIn("triton_python_backend_utils"))
    monkeypatch.delitem(sys.modules, "text_tokens", raising=False)
    monkeypatch.syspath_prepend(str(version))
    spec = importlib.util.spec_from_file_location("lsg_tokenizer_model_py", version / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = json_format.MessageToJson(read_config(repo, name), preserving_proto_field_name=True)
    model.initialize({"model_config": config, "model_repository": str(repo.path / name), "model_version": "1"})
    assert sys.modules["text_tokens"].__file__ == str(version / "text_tokens.py")  # the copy, not the package
    return model


def text_request(texts):
    return [StandIn.Tensor("text", np.array([t.encode() for t in texts], dtype=np.object_))]


def test_tokenizer_model_tokenizes_as_serve(tokenizer_model, export):
    from kserve.protocol.infer_type import InferInput
    from transformers import AutoTokenizer

    from lsg_export.deploy.server import make_model
    texts = cases.texts(6, seed=3)
    batches = [texts[:4], texts[4:]]
    responses = tokenizer_model.execute([text_request(b) for b in batches])  # two requests, two responses
    assert len(responses) == 2 and all(r.error is None for r in responses)
    served = make_model(export)
    reference = AutoTokenizer.from_pretrained(str(export))
    for batch, response in zip(batches, responses):
        got = {t.name(): t.as_numpy() for t in response.output_tensors}
        text = InferInput("text", [len(batch)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in batch], dtype=np.object_), binary_data=False)
        want = served._tokenize(text)
        assert list(got) == list(want) == ["input_ids", "attention_mask", "token_type_ids"]
        for key in want:
            assert got[key].dtype == want[key].dtype == np.int64 and np.array_equal(got[key], want[key])
        padded = reference(batch, padding=True, return_tensors="np")
        for key in want:
            assert np.array_equal(got[key], padded[key])


def test_tokenizer_model_refuses_long_text(tokenizer_model):
    long_text = " ".join(["w7"] * 70)
    bad, good = tokenizer_model.execute([text_request(["w1", long_text]), text_request(["w1 w2"])])
    assert bad.output_tensors == [] and bad.error.code == StandIn.TritonError.INVALID_ARG
    assert bad.error.message() == \
        "input text: text 1 is 72 tokens long, longer than 64, the longest this export accepts"
    assert good.error is None and good.output_tensors[0].as_numpy().shape == (1, 4)  # [CLS] w1 w2 [SEP]
    bad, = tokenizer_model.execute([[StandIn.Tensor("text", np.array([[b"a", b"b"]], dtype=np.object_))]])
    assert bad.error.message() == "input text: shape [1, 2], expected [batch]: one string per row"


def test_shared_encode_refuses_and_never_truncates(export):
    tokenizer = text_tokens.load_tokenizer(export)
    exact = " ".join(["w3"] * (cases.SEQ - 2))  # + [CLS] and [SEP]: exactly the export's length
    arrays = text_tokens.encode(tokenizer, [exact, "w1"], cases.SEQ, ["input_ids", "attention_mask"])
    assert arrays["input_ids"].shape == (2, cases.SEQ) and arrays["attention_mask"].sum(axis=1).tolist() == [64, 3]
    with pytest.raises(text_tokens.TextError, match="text 0 is 65 tokens long, longer than 64"):
        text_tokens.encode(tokenizer, [exact + " w3"], cases.SEQ, ["input_ids"])
    assert text_tokens.texts_of(np.array([[b"a"], [b"b"]], dtype=np.object_)) == ["a", "b"]
    with pytest.raises(text_tokens.TextError, match="not UTF-8"):
        text_tokens.texts_of(np.array([b"\xff"], dtype=np.object_))
    assert text_tokens.fills(["input_ids", "attention_mask"]) and not text_tokens.fills(["pixel_values"])
    assert json.loads((export / "config.json").read_text())["vocab_size"] == 100  # the ids above are in range
