"""Summarisers end to end: decoding.py's loop (the one of `lsg-export serve` and of the Triton repository's python
model) gives transformers' generate() tokens on the tiny bart export, greedy and beam search, merged and split
decoders; `serve` answers the generate extension and v2 infer with the PyTorch model's summary and refuses bad
input with a 4xx while it keeps serving; `deploy` writes the graph models, the python model and the manifest.

The export is the session's tiny bart (_seq2seq_exports.py, shared with test_seq2seq_onnx.py), copied with a
word-level tokenizer and a summariser's generation config."""
import json

import numpy as np
import pytest
import torch

from _seq2seq_exports import texts

pytest.importorskip("kserve")


def reference(converted, folder, batch, **overrides):
    """transformers' generate() on the PyTorch model with the export's generation config: (token ids, texts)."""
    from transformers import AutoTokenizer, GenerationConfig
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokens = tokenizer(batch, padding=True, return_tensors="pt")
    config = GenerationConfig.from_pretrained(str(folder))
    with torch.no_grad():
        ids = converted.model.eval().generate(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                                              generation_config=config, **overrides)
    return ids.numpy(), tokenizer.batch_decode(ids, skip_special_tokens=True)


def ort_loop(folder, merged):
    """(encode, decoder, codec, settings) of decoding.py on ONNX Runtime sessions of the export's graphs."""
    import onnxruntime as ort

    from lsg_export.deploy.decoding import GenerationSettings, GraphDecoder, TextCodec
    sessions = {name: ort.InferenceSession(str(folder / f"{file}.onnx"), providers=["CPUExecutionProvider"])
                for name, file in (("encoder", "encoder_model"), ("decoder", "decoder_model"),
                                   ("decoder_with_past", "decoder_with_past_model"),
                                   ("decoder_merged", "decoder_model_merged"))}

    def run(graph, feeds):
        session = sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, {i.name: feeds[i.name] for i in session.get_inputs()})))

    def encode(ids, mask):
        return sessions["encoder"].run(None, {"input_ids": ids, "attention_mask": mask})[0]

    config = json.loads((folder / "config.json").read_text())
    heads = config["decoder_attention_heads"]
    decoder = GraphDecoder(run, config["decoder_layers"], heads, config["d_model"] // heads, merged)
    settings = GenerationSettings.from_folder(folder).check()
    return encode, decoder, TextCodec(folder, settings.pad_token_id, 64), settings


def test_generation_settings_read_as_transformers_reads_them(tmp_path):
    """generation_config.json alone when it is there (config.json's generation keys only without it), the
    new-token budget from max_new_tokens or max_length, a request's overrides checked, unsupported keys named."""
    from transformers import GenerationConfig

    from lsg_export.deploy.decoding import DecodingError, GenerationSettings
    config = {"decoder_start_token_id": 2, "eos_token_id": 2, "pad_token_id": 1, "forced_eos_token_id": 2,
              "num_beams": 4, "max_length": 30, "no_repeat_ngram_size": 3}
    (tmp_path / "config.json").write_text(json.dumps(config))
    settings = GenerationSettings.from_folder(tmp_path)
    assert (settings.num_beams, settings.new_tokens, settings.no_repeat_ngram_size, settings.forced_eos_token_ids) \
        == (4, 29, 3, (2,))
    generation = {"decoder_start_token_id": 0, "eos_token_id": [1, 2], "max_new_tokens": 7, "length_penalty": 0.5}
    (tmp_path / "generation_config.json").write_text(json.dumps(generation))
    settings = GenerationSettings.from_folder(tmp_path)
    expected = GenerationConfig.from_pretrained(str(tmp_path))  # what generate() would use
    assert settings.num_beams == expected.num_beams == 1 and settings.forced_eos_token_ids == ()
    assert expected.forced_eos_token_id is None and expected.no_repeat_ngram_size == settings.no_repeat_ngram_size
    assert (settings.decoder_start_token_id, settings.eos_token_ids, settings.new_tokens) == (0, (1, 2), 7)
    assert settings.override(num_beams=3, max_new_tokens=2).new_tokens == 2
    for bad in ({"num_beams": 0}, {"max_new_tokens": -1}, {"num_beams": 2.5}, {"num_beams": True}):
        with pytest.raises(DecodingError, match="must be an integer >= 1"):
            settings.override(**bad)
    (tmp_path / "generation_config.json").write_text(json.dumps(dict(generation, do_sample=True,
                                                                    repetition_penalty=1.2)))
    with pytest.raises(DecodingError, match=r"sets do_sample=True, repetition_penalty=1\.2, which"):
        GenerationSettings.from_folder(tmp_path).check()


LOOP_CASES = [  # (request overrides, generation config changes)
    ({"num_beams": 1}, {}),
    ({"num_beams": 1, "max_new_tokens": 9}, {"no_repeat_ngram_size": 0, "forced_bos_token_id": None}),
    ({}, {}),  # the export's: 3 beams, length penalty 2, early stopping, no 3-gram twice, min length 4
    ({"num_beams": 4}, {"early_stopping": False, "length_penalty": 1.0}),
    ({"num_beams": 2, "max_new_tokens": 12}, {"early_stopping": "never", "length_penalty": 0.5, "min_length": 0}),
]


@pytest.mark.parametrize("merged", [True, False], ids=["merged", "split"])
def test_loop_generates_pytorch_tokens(summariser_export, merged, tmp_path):
    """The numpy loop on the graphs gives generate()'s tokens and text for texts across the block boundaries (a
    padded batch), greedy and beam search, under each early-stopping mode and the generation config's processors."""
    import shutil

    from lsg_export.deploy.decoding import generate
    converted, export = summariser_export
    batch = texts(3, seed=4) + ["w1 w2 w3 w4 w5 w6 w7"]
    for overrides, changes in LOOP_CASES:
        folder = export
        if changes:
            folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
            shutil.copytree(export, folder)
            generation = json.loads((export / "generation_config.json").read_text())
            generation.update(changes)
            (folder / "generation_config.json").write_text(json.dumps({k: v for k, v in generation.items()
                                                                       if v is not None}))
        encode, decoder, codec, settings = ort_loop(folder, merged)
        expected_ids, expected_texts = reference(converted, folder, batch, **overrides)
        ids, mask = codec.encode(batch)
        got = generate(encode, decoder, ids, mask, settings.override(**overrides))
        assert got.shape == expected_ids.shape and np.array_equal(got, expected_ids), (overrides, changes, got,
                                                                                        expected_ids)
        assert codec.decode(got) == expected_texts


# --- lsg-export serve -----------------------------------------------------------------------------

NAME = "tiny"


def post(server, path, body):
    """Raw POST on the server: (status, parsed JSON or text)."""
    import urllib.error
    import urllib.request
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{server.url}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, text


@pytest.fixture(scope="module")
def server(summariser_export, tmp_path_factory):
    from test_serve import Server
    server = Server(summariser_export[1], tmp_path_factory.mktemp("serve-summariser") / "server.log")
    yield server
    server.stop()


@pytest.mark.quick  # the quick tier's one seq2seq export (~35 s of torch.export)
def test_served_summaries_equal_pytorch(server, summariser_export):
    """The generate extension (one text, then a list) and v2 infer with a `text` input answer the PyTorch model's
    generate() summary, with the export's generation config and with a request's max_new_tokens / num_beams."""
    converted, export = summariser_export
    batch = texts(2, seed=7) + ["w3 w9 w27 w81"]
    for parameters in ({}, {"num_beams": 1}, {"num_beams": 4, "max_new_tokens": 10}):
        _, expected = reference(converted, export, batch, **parameters)
        assert max(len(text.split()) for text in expected) >= 3  # summaries of several words, not just eos
        status, answer = post(server, f"/v2/models/{NAME}/generate", {"text_input": batch[0], "parameters": parameters,
                                                                     "id": "r1"})
        assert status == 200, answer
        assert answer == {"model_name": NAME, "model_version": "1", "text_output": expected[0], "id": "r1"}
        status, answer = post(server, f"/v2/models/{NAME}/generate", {"text_input": batch, "parameters": parameters})
        assert status == 200 and answer["text_output"] == expected, answer
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": batch}],
                "parameters": parameters}
        status, answer = post(server, f"/v2/models/{NAME}/infer", body)
        assert status == 200, answer
        assert [(o["name"], o["datatype"], o["shape"]) for o in answer["outputs"]] == [("text_output", "BYTES", [3])]
        assert answer["outputs"][0]["data"] == expected


def bad_requests():
    """(path's model, body or raw bytes, status, fragment of the one-line message)."""
    long_text = " ".join(["w7"] * 63)  # + <s> and </s>: 65 tokens
    return [
        (NAME, {"text_input": long_text}, 400, "text 0 is 65 tokens long, longer than 64"),
        (NAME, {"text_input": "w1 w2", "parameters": {"num_beams": 0}}, 400, "num_beams must be an integer >= 1"),
        (NAME, {"text_input": "w1 w2", "parameters": {"max_new_tokens": 0}}, 400,
         "max_new_tokens must be an integer >= 1"),
        (NAME, {"text_input": "w1 w2", "parameters": {"num_beams": "2"}}, 400, "num_beams must be an integer >= 1"),
        (NAME, {"text_input": "w1 w2", "parameters": {"temperature": 0.5}}, 400, "unknown parameter temperature"),
        (NAME, {"text_input": "w1 w2", "parameters": {"stream": True}}, 400, "stream=True is not supported"),
        (NAME, {"text_input": []}, 400, "no text"),
        (NAME, {"text_input": 5}, 400, "must be a string or a list of strings"),
        (NAME, {"prompt": "w1"}, 400, "a JSON object with \"text_input\""),
        (NAME, {"text_input": "w1", "max_tokens": 5}, 400, "unknown field max_tokens"),
        (NAME, b'{"text_input": "w1', 400, "the body is not JSON"),
        ("other", {"text_input": "w1"}, 404, "Model with name other does not exist"),
    ]


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, summariser_export):
    converted, export = summariser_export
    good = {"text_input": "w5 w6 w7 w8", "parameters": {"num_beams": 2, "max_new_tokens": 6}}
    _, expected = reference(converted, export, [good["text_input"]], **good["parameters"])
    for model, body, code, fragment in bad_requests():
        status, answer = post(server, f"/v2/models/{model}/generate", body)
        assert status == code, (fragment, status, answer)
        assert fragment in answer["error"] and "\n" not in answer["error"], (fragment, answer)
        status, answer = post(server, f"/v2/models/{NAME}/generate", good)  # still serving, still right
        assert status == 200 and answer["text_output"] == expected[0]
    infer = f"/v2/models/{NAME}/infer"
    for body, fragment in (({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1], "data": [5]}]},
                            "takes one input, text"),
                           ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["w1"]}],
                             "parameters": {"num_beams": -1}}, "num_beams must be an integer >= 1")):
        status, answer = post(server, infer, body)
        assert status == 400 and fragment in answer["error"], answer
    assert server.process.poll() is None


# --- lsg-export deploy ----------------------------------------------------------------------------

def test_deploy_writes_the_summariser_repository(summariser_export, tmp_path):
    """The graph models (onnxruntime, the graphs' own inputs and outputs, no batching), the python model (model.py
    and decoding.py, the tokenizer and generation config beside them, the graph models' names in its parameters),
    and a manifest that the KServe SDK loads."""
    from _cli import invoke

    from lsg_export.deploy import decoding, kserve, triton
    from lsg_export.deploy.folder import read_graph
    _, export = summariser_export
    repo = tmp_path / "repo"
    result = invoke("deploy", export, "-o", repo, "--name", "summ", "--instances", 2, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["name"] == "summ" and info["max_batch_size"] == 0
    package = decoding.__file__.rsplit("/", 1)[0]
    version = repo / "summ" / "1"
    assert (version / "model.py").read_text() == open(f"{package}/triton_model.py").read()
    assert (version / "decoding.py").read_text() == open(decoding.__file__).read()
    for file in ("tokenizer.json", "generation_config.json", "config.json", "tokenizer_config.json"):
        assert (version / file).read_bytes() == (export / file).read_bytes()
    models = {"encoder": ("summ-encoder", "encoder_model.onnx"), "decoder_merged": ("summ-decoder",
                                                                                   "decoder_model_merged.onnx")}
    assert sorted(info["files"]) == sorted(
        ["README.md", "inferenceservice.yaml", "summ/config.pbtxt"]
        + [f"summ/1/{f}" for f in ("model.py", "decoding.py", "tokenizer.json", "tokenizer_config.json",
                                   "special_tokens_map.json", "generation_config.json", "config.json")]
        + [f"{m}/config.pbtxt" for m, _ in models.values()] + [f"{m}/1/{f}" for m, f in models.values()])
    pb = triton.model_config_pb2()
    for role, (model, file) in models.items():
        config = triton.parse((repo / model / "config.pbtxt").read_text())
        assert (repo / model / "1" / file).read_bytes() == (export / file).read_bytes()
        assert config.backend == "onnxruntime" and config.max_batch_size == 0 and config.default_model_filename == file
        assert not config.HasField("dynamic_batching")
        assert [(g.kind, g.count) for g in config.instance_group] == [(pb.ModelInstanceGroup.KIND_CPU, 2)]
        inputs, outputs, _, _ = read_graph(export, file)
        assert [(t.name, list(t.dims)) for t in config.input] == [(s.name, list(s.shape)) for s in inputs]
        assert [(t.name, list(t.dims)) for t in config.output] == [(s.name, list(s.shape)) for s in outputs]
    assert [(t.name, pb.DataType.Name(t.data_type)) for t in config.input if t.name == "use_cache_branch"] == [
        ("use_cache_branch", "TYPE_BOOL")]
    config = triton.parse((repo / "summ" / "config.pbtxt").read_text())
    assert config.backend == "python" and config.max_batch_size == 0
    assert [(t.name, pb.DataType.Name(t.data_type), list(t.dims), t.optional) for t in config.input] == [
        ("text_input", "TYPE_STRING", [-1], True), ("text", "TYPE_STRING", [-1], True),
        ("max_new_tokens", "TYPE_INT32", [1], True), ("num_beams", "TYPE_INT32", [1], True)]
    assert [(t.name, pb.DataType.Name(t.data_type)) for t in config.output] == [("text_output", "TYPE_STRING")]
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert json.loads(parameters["graph_models"]) == {role: model for role, (model, _) in models.items()}
    assert (parameters["max_tokens"], parameters["layers"], parameters["heads"], parameters["head_dim"]) == (
        "64", "2", "4", "8")
    service = kserve.from_yaml((repo / "inferenceservice.yaml").read_text())
    assert service.metadata.name == "summ" and service.spec.predictor.model.model_format.name == "triton"
    assert service.spec.predictor.model.storage_uri == "pvc://lsg-models/repo"
    readme = (repo / "README.md").read_text()
    assert "/v2/models/summ/generate" in readme and "summ-decoder/1/decoder_model_merged.onnx" in readme


def test_deploy_and_serve_refuse_what_they_cannot_serve(summariser_export, tmp_path):
    """An encoder-decoder export without a tokenizer, with a generation config the loop does not implement, or
    with a graph missing: one line, nothing written."""
    import shutil

    from _cli import assert_user_error, invoke
    _, export = summariser_export
    out = tmp_path / "out"
    cases = []
    no_tokenizer = shutil.copytree(export, tmp_path / "no-tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    cases.append((no_tokenizer, "no tokenizer.json"))
    sampling = shutil.copytree(export, tmp_path / "sampling")
    generation = json.loads((export / "generation_config.json").read_text())
    (sampling / "generation_config.json").write_text(json.dumps(dict(generation, do_sample=True, top_k=5)))
    cases.append((sampling, "sets do_sample=True, which this server's decoding"))
    no_encoder = shutil.copytree(export, tmp_path / "no-encoder")
    (no_encoder / "encoder_model.onnx").unlink()
    cases.append((no_encoder, "no encoder_model.onnx"))
    for folder, fragment in cases:
        assert_user_error(invoke("deploy", folder, "-o", out), fragment)
        assert not out.exists()
        assert_user_error(invoke("serve", folder, "--port", 1), fragment)


def test_an_export_without_the_merged_decoder(summariser_export, tmp_path):
    """--no-merge-decoders exports: deploy writes the decoder and the decoder with past as two graph models, and
    serve's model (in this process) generates the PyTorch model's summaries on them."""
    import shutil

    from _cli import invoke

    from lsg_export.deploy import triton
    from lsg_export.deploy.server import make_model
    converted, export = summariser_export
    folder = shutil.copytree(export, tmp_path / "unmerged")
    meta = json.loads((folder / "export.json").read_text())
    meta.update(graphs=[g for g in meta["graphs"] if g["name"] != "decoder_merged"], merged_decoder=False,
                files=[f for f in meta["files"] if f != "decoder_model_merged.onnx"])
    (folder / "export.json").write_text(json.dumps(meta))
    (folder / "decoder_model_merged.onnx").unlink()
    result = invoke("deploy", folder, "-o", tmp_path / "repo", "--name", "summ")
    assert result.exit_code == 0, result.output
    parameters = triton.parse((tmp_path / "repo/summ/config.pbtxt").read_text()).parameters
    assert json.loads(parameters["graph_models"].string_value) == {
        "encoder": "summ-encoder", "decoder": "summ-decoder", "decoder_with_past": "summ-decoder-with-past"}
    for model, file in (("summ-decoder", "decoder_model.onnx"), ("summ-decoder-with-past",
                                                                 "decoder_with_past_model.onnx")):
        assert triton.parse((tmp_path / "repo" / model / "config.pbtxt").read_text()).default_model_filename == file
        assert (tmp_path / "repo" / model / "1" / file).is_file()
    model = make_model(folder, "summ")
    assert not model.export.merged and sorted(model._sessions) == ["decoder", "decoder_with_past", "encoder"]
    batch = texts(2, seed=11)
    for parameters in ({"num_beams": 1}, {"num_beams": 3, "max_new_tokens": 8}):
        assert model.summarise(batch, parameters) == reference(converted, folder, batch, **parameters)[1]
