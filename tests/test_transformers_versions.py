"""What must hold on every supported transformers (4.57 with optimum, the newest 5.x without it; CI runs
this module in both): an encoder and an encoder-decoder export and validate, transformers' generate()
drives the exported graphs to PyTorch's tokens (greedy and beam search, merged decoder or the two
decoders), what needs optimum says so in one error line, and the converted folders warn nothing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_BLOCK_SIZE
from lsg_export import convert
from lsg_export.compat import has_optimum
from lsg_export.errors import LSGExportError
from lsg_export.graph_list import graph_list
from lsg_export.onnx import export_onnx, load_ort_model, validate_onnx
from lsg_export.onnx.generation import load_generator
from lsg_export.onnx.seq2seq import MERGED_FILE, Sessions
from lsg_export.onnx.attention_kinds import get_attention_kind

sys.path.insert(0, str(Path(__file__).parent))
from _cli import assert_user_error, invoke  # noqa: E402

SEQ = 64
LENGTHS = [1, 17, SEQ]  # within, across and at the end of the blocks


def tiny(checkpoint, output, architecture=None):
    return convert(str(checkpoint), output, architecture=architecture, max_sequence_length=SEQ,
                   block_size=TINY_BLOCK_SIZE, sparse_block_size=TINY_BLOCK_SIZE)


@pytest.fixture(scope="module")
def exports(tiny_checkpoint, tmp_path_factory):
    """A bert and a bart exported and validated with the defaults (the merged decoder where optimum is); the bert
    with --pooling mean, so with model_short.onnx too."""
    work = tmp_path_factory.mktemp("versions")
    bert = tiny(tiny_checkpoint("bert"), work / "lsg-bert", "BertModel")
    bart = tiny(tiny_checkpoint("bart"), work / "lsg-bart")
    return {"bert": (bert, export_onnx(str(bert.path), work / "bert-onnx", seq=SEQ, lengths=LENGTHS,
                                                pooling="mean")),
            "bart": (bart, export_onnx(str(bart.path), work / "bart-onnx", seq=SEQ, lengths=LENGTHS))}


@pytest.mark.parametrize("model_type", ["bert", "bart"])
def test_export_and_validate(exports, model_type):
    _, result = exports[model_type]
    meta = json.loads((result.path / "export.json").read_text())
    assert meta["validation"]["passed"] and meta["validation"]["lengths"] == LENGTHS
    rows = {(row["length"], row["output"]): row for row in meta["validation"]["rows"]}
    for length in LENGTHS:
        first = "last_hidden_state"
        assert rows[length, first]["max_abs_diff"] <= 1e-4
        if model_type == "bart":  # greedy tokens of transformers' generate() on the graphs: PyTorch's
            assert rows[length, "greedy tokens"]["max_abs_diff"] == 0
    if model_type == "bert":  # model_short.onnx (dense attention up to 2 blocks of 8) validated beside model.onnx
        short = [row for (_, output), row in rows.items() if "model_short.onnx" in output]
        assert meta["short_graph"]["max_tokens"] == 16 and len(short) == 14
        assert all(row["ok"] and row["max_abs_diff"] <= 1e-4 for row in short)
    if model_type == "bart":  # optimum's merge is the [optimum] extra's
        assert meta["merged_decoder"] is has_optimum()
        assert ((result.path / MERGED_FILE).is_file()) is has_optimum()
    report = validate_onnx(result.path, lengths=[33], record=False)
    assert report.passed


def prompts(length, generator):
    ids = torch.randint(5, 100, (2, length), generator=generator)
    mask = torch.ones_like(ids)
    short = max(1, 2 * length // 3)
    ids[0, -1] = ids[1, short - 1] = 2
    ids[1, short:], mask[1, short:] = 1, 0
    return ids, mask


@pytest.mark.parametrize("merged", [False, True])
def test_generate_drives_the_graphs(exports, merged):
    """transformers' generate() on the graphs (OrtSeq2SeqGenerator): PyTorch's greedy and beam tokens."""
    converted, result = exports["bart"]
    if merged and not (result.path / MERGED_FILE).is_file():
        pytest.skip("no merged decoder without optimum")
    graphs = graph_list(json.loads((result.path / "export.json").read_text()))
    sessions = Sessions(result.path, graphs, "cpu", get_attention_kind("gather"))
    model = load_generator(result.path, sessions.parts(), use_merged=merged)  # without it: the two decoders
    reference = converted.model.eval()
    generator = torch.Generator().manual_seed(5)
    for length, beams in ((6, 1), (17, 3), (SEQ, 2)):
        ids, mask = prompts(length, generator)
        settings = dict(max_new_tokens=10, min_new_tokens=10, num_beams=beams, do_sample=False)
        with torch.no_grad():
            expected = reference.generate(input_ids=ids, attention_mask=mask, **settings)
            got = model.generate(input_ids=ids, attention_mask=mask, **settings)
        assert torch.equal(got, expected), (length, beams)


@pytest.mark.skipif(has_optimum(), reason="optimum installed: its loaders work")
def test_what_needs_optimum_says_so(exports):
    for model_type in ("bert", "bart"):
        with pytest.raises(LSGExportError, match=r"lsg-export\[optimum\]"):
            load_ort_model(exports[model_type][1].path)
    converted, _ = exports["bart"]
    out = converted.path.parent / "merged-out"
    result = invoke("onnx", converted.path, "-o", out, "--seq", SEQ, "--merge-decoders")
    assert_user_error(result, "--merge-decoders", "lsg-export[optimum]")
    assert not out.exists()


@pytest.mark.skipif(not has_optimum(), reason="optimum not installed")
def test_optimum_loaders_with_the_extra(exports):
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTModelForSeq2SeqLM
    assert isinstance(load_ort_model(exports["bert"][1].path), ORTModelForFeatureExtraction)
    assert isinstance(load_ort_model(exports["bart"][1].path), ORTModelForSeq2SeqLM)


def test_bad_model_kwargs_value(tiny_checkpoint, tmp_path):
    """A value of the wrong type in --model-kwargs: one error line, exit 2 (transformers 5 rejects it while
    building the config, 4.x while loading the weights)."""
    for model_type, key in (("bert", "hidden_size"), ("bart", "d_model")):
        out = tmp_path / model_type
        result = invoke("convert", tiny_checkpoint(model_type), "-o", out, "--max-sequence-length", SEQ,
                        "--model-kwargs", json.dumps({key: "x"}))
        assert_user_error(result)
        assert not out.exists()


def test_loading_warns_nothing(exports, tmp_path):
    """The converted folders load with their Auto class in a fresh Python, at transformers' default
    verbosity and Python's default warning filters, and run without a warning or log line."""
    script = (
        "import logging, warnings, torch, transformers\n"
        "warnings.simplefilter('always')\n"
        "transformers.utils.logging.disable_progress_bar()  # transformers 5's loading bar: no warning\n"
        "import sys\n"
        "bert = transformers.AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "bart = transformers.AutoModelForSeq2SeqLM.from_pretrained(sys.argv[2], trust_remote_code=True).eval()\n"
        "ids = torch.randint(5, 100, (2, 40))\n"
        "with torch.no_grad():\n"
        "    bert(input_ids=ids)\n"
        "    bart(input_ids=ids, decoder_input_ids=ids[:, :3])\n"
        "    bart.generate(input_ids=ids, max_new_tokens=4, num_beams=2)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRANSFORMERS_VERBOSITY")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-c", script, str(exports["bert"][0].path), str(exports["bart"][0].path)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr == "" and run.stdout == "", run.stderr[-3000:]


def test_compat_shim():
    """modeling/lsg_compat.py, the one place the copied code differs by version: return_dict without
    config.use_return_dict, the family encoder sharing the model's token table, a layer's hidden states."""
    from transformers.models.bart.modeling_bart import BartEncoder

    from conftest import tiny_config
    from lsg_export.modeling.lsg_compat import init_family_encoder, layer_hidden, return_dict_of
    config = tiny_config("bart")
    assert return_dict_of(config, None) is True and return_dict_of(config, False) is False
    config.return_dict = False
    assert return_dict_of(config, None) is False and return_dict_of(config, True) is True
    table = torch.nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
    encoder = BartEncoder.__new__(BartEncoder)
    init_family_encoder(encoder, BartEncoder, config, table)
    assert encoder.embed_tokens.weight is table.weight and len(encoder.layers) == config.encoder_layers
    hidden = torch.ones(1, 2, 3)
    assert layer_hidden((hidden, None)) is hidden and layer_hidden(hidden) is hidden
