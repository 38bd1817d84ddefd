"""ONNX export of the encoder-decoder families: optimum's ORTModelForSeq2SeqLM layout, encoder with LSG
attention, dense decoder with its cache; ONNX Runtime generates PyTorch's tokens.

Two tiny exports, once per module: bart (1 global passed to the decoder, norm) through the Python API
and a 1-layer pegasus (2 globals not passed on, pooling) through the CLI."""
import json

import pytest
import torch
from click.testing import CliRunner

from conftest import TINY_BLOCK_SIZE, original_class, tiny_config
from lsg_export import convert
from lsg_export.cli import main
from lsg_export.families import SEQ2SEQ_FAMILIES
from lsg_export.onnx import export_onnx
from lsg_export.onnx.seq2seq import PART_FILES, decoder_names

SEQ = 40  # 5 blocks of 8
LENGTHS = [1, 7, 8, 9, 16, 17, 25, SEQ]  # both sides of the 1- and 2-block boundaries


def convert_tiny(checkpoint, output, model_type, head="ForConditionalGeneration", **options):
    return convert(str(checkpoint), output, architecture=SEQ2SEQ_FAMILIES[model_type].architecture(head),
                   max_sequence_length=64, block_size=TINY_BLOCK_SIZE, sparse_block_size=TINY_BLOCK_SIZE, **options)


@pytest.fixture(scope="module")
def exports(tiny_checkpoint, tmp_path_factory):
    work = tmp_path_factory.mktemp("seq2seq-onnx")
    bart = convert_tiny(tiny_checkpoint("bart"), work / "lsg-bart", "bart")
    bart_export = export_onnx(str(bart.path), work / "bart-onnx", seq=SEQ, lengths=LENGTHS)
    # pegasus with 1 encoder and 1 decoder layer: the export time is per layer
    settings = tiny_config("pegasus").to_dict()
    settings.update(encoder_layers=1, decoder_layers=1)
    torch.manual_seed(0)
    original = original_class("pegasus", "ForConditionalGeneration")
    original(original.config_class.from_dict(settings)).save_pretrained(work / "pegasus")
    pegasus = convert_tiny(work / "pegasus", work / "lsg-pegasus", "pegasus", num_global_tokens=2,
                           sparsity_type="pooling", model_kwargs={"pass_global_tokens_to_decoder": False})
    run = CliRunner().invoke(main, ["onnx", str(pegasus.path), "-o", str(work / "pegasus-onnx"), "--seq", str(SEQ),
                                    "--lengths", ",".join(map(str, LENGTHS)), "--json"])
    return {"bart": (bart, bart_export.path, bart_export.info), "pegasus": (pegasus, work / "pegasus-onnx", run)}


def test_cli_export_json(exports):
    run = exports["pegasus"][2]
    assert run.exit_code == 0, run.output
    data = json.loads(run.stdout)
    assert data["task"] == "text2text-generation" and data["seq2seq"] is True
    assert data["lsg"]["pass_global_tokens_to_decoder"] is False and data["lsg"]["sparsity_type"] == "pooling"


@pytest.mark.parametrize("model_type", ["bart", "pegasus"])
def test_layout_and_validation(exports, model_type):
    import onnx
    converted, folder, _ = exports[model_type]
    data = json.loads((folder / "export.json").read_text())
    assert sorted(p.name for p in folder.glob("*.onnx")) == sorted(PART_FILES)
    assert data["seq"] == SEQ and data["graph"]["domains"] == [""]
    layers = converted.model.config.decoder_layers
    encoder = onnx.load(str(folder / "encoder_model.onnx"))
    assert [v.name for v in encoder.graph.input] == ["input_ids", "attention_mask"]
    assert [v.name for v in encoder.graph.output] == ["last_hidden_state"]
    for file, with_past in (("decoder_model.onnx", False), ("decoder_with_past_model.onnx", True)):
        graph = onnx.load(str(folder / file)).graph
        inputs, outputs = decoder_names(layers, with_past)
        assert [v.name for v in graph.input] == inputs and [v.name for v in graph.output] == outputs
    # the export's own validation: encoder output, logits without and with past, greedy tokens, every length
    validation = data["validation"]
    assert validation["passed"] and validation["lengths"] == LENGTHS
    rows = {(row["length"], row["output"]): row for row in validation["rows"]}
    for length in LENGTHS:
        for output in ("last_hidden_state", "logits", "logits (past)"):
            assert rows[length, output]["max_abs_diff"] <= 1e-4
        assert rows[length, "greedy tokens"]["max_abs_diff"] == 0 and rows[length, "greedy tokens"]["ok"]


def prompts(model_type, length, generator):
    """2 prompts of `length` tokens ending with eos, the second padded to 2/3 of it."""
    pad, eos = (0, 1) if model_type == "pegasus" else (1, 2)
    ids = torch.randint(5, 100, (2, length), generator=generator)
    mask = torch.ones_like(ids)
    short = max(1, 2 * length // 3)
    ids[0, -1] = ids[1, short - 1] = eos
    ids[1, short:], mask[1, short:] = pad, 0
    return ids, mask


@pytest.mark.parametrize("model_type", ["bart", "pegasus"])
def test_optimum_generates_pytorch_tokens(exports, model_type):
    """optimum's ORTModelForSeq2SeqLM, loaded from OUT without remote code: greedy and beam search give
    the PyTorch model's tokens for prompts across the block boundaries."""
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    from lsg_export.onnx import load_ort_model
    converted, folder, _ = exports[model_type]
    ort_model = ORTModelForSeq2SeqLM.from_pretrained(str(folder))
    assert ort_model.use_cache
    assert isinstance(load_ort_model(folder), ORTModelForSeq2SeqLM)  # the package's loader picks it too
    model = converted.model.eval()
    generator = torch.Generator().manual_seed(5)
    for length, beams in ((6, 1), (9, 1), (17, 2), (33, 1), (SEQ, 2)):
        ids, mask = prompts(model_type, length, generator)
        settings = dict(max_new_tokens=10, min_new_tokens=10, num_beams=beams, do_sample=False)
        with torch.no_grad():
            expected = model.generate(input_ids=ids, attention_mask=mask, **settings)
        got = ort_model.generate(input_ids=ids, attention_mask=mask, **settings)
        assert torch.equal(got, expected), (length, beams)


def test_validate_command(exports):
    _, folder, _ = exports["bart"]
    run = CliRunner().invoke(main, ["validate", str(folder), "--lengths", "9,33", "--batch-size", "3", "--json"])
    assert run.exit_code == 0, run.output
    data = json.loads(run.stdout)
    assert data["passed"] and data["lengths"] == [9, 33] and data["batch_size"] == 3
    assert {row["output"] for row in data["rows"]} == {"last_hidden_state", "logits", "logits (past)", "greedy tokens"}


def test_bad_input(exports, tiny_checkpoint, tmp_path):
    """Heads other than ForConditionalGeneration and unsupported options: one error line, exit 2, no output."""
    model = convert_tiny(tiny_checkpoint("bart"), tmp_path / "lsg-bart-model", "bart", head="Model")
    bart = exports["bart"][0].path
    for folder, extra, message in ((model.path, [], "ForConditionalGeneration"),
                                   (bart, ["--optimize", "O2"], "not available for encoder-decoders"),
                                   (bart, ["--seq", "65"], "outside 1..64")):
        out = tmp_path / "out"
        run = CliRunner().invoke(main, ["onnx", str(folder), "-o", str(out), *extra])
        assert run.exit_code == 2 and message in run.output and run.output.startswith("error:"), run.output
        assert not out.exists()
