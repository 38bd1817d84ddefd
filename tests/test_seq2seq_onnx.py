"""ONNX export of the encoder-decoder families: optimum's ORTModelForSeq2SeqLM layout, encoder with LSG
attention, dense decoder with its cache; ONNX Runtime generates PyTorch's tokens.

Two tiny exports, once per module: bart (1 global passed to the decoder, norm) through the Python API
and a 1-layer pegasus (2 globals not passed on, pooling) through the CLI; the bart again with
`--attention custom-op` (skipped without the custom-op library), and `lsg-export bench` on the bart
export (encoder latency and generation tokens/s; its ort-custom-op export made by the bench's cache)."""
import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import TINY_BLOCK_SIZE, original_class, tiny_config
from lsg_export import convert
from lsg_export.cli import main
from lsg_export.families import SEQ2SEQ_FAMILIES
from lsg_export.onnx import export_onnx
from lsg_export.onnx.seq2seq import PART_FILES, decoder_names

sys.path.insert(0, str(Path(__file__).parent))
from _cli import assert_user_error, invoke  # noqa: E402

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


# --- --attention custom-op ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ops_library():
    from lsg_export import ops
    from lsg_export.errors import LSGExportError
    try:
        return ops.library_path()  # built here if missing (cached)
    except LSGExportError as error:
        pytest.skip(f"the custom-op library is unavailable: {error}")


@pytest.fixture(scope="module")
def custom_op_bart(exports, ops_library):
    """The tiny LSG bart exported with --attention custom-op: (converted, export folder). Made by the bench's
    export cache (export_onnx with the ort-custom-op backend's options, validated), where the bench test
    below then finds it instead of exporting it again."""
    from lsg_export.bench.exports import CACHE_DIR, cached_export, inside
    from lsg_export.bench.target import resolve_target
    converted = exports["bart"][0]
    target = resolve_target(converted.path)
    with inside(target.model / CACHE_DIR):
        folder = cached_export("ort-custom-op", target, "cpu", status=lambda message: None)
    return converted, folder


def test_custom_op_encoder_and_greedy_tokens(custom_op_bart):
    """The custom-op encoder equals PyTorch's (1e-5) on the globals and real tokens of a padded batch at
    lengths across the block boundaries, and greedy generation gives PyTorch's tokens."""
    import onnx

    from lsg_export import ops
    from lsg_export.onnx import load_ort_model
    converted, folder = custom_op_bart
    meta = json.loads((folder / "export.json").read_text())
    assert meta["attention"] == "custom-op" and meta["graph"]["domains"] == ["", ops.DOMAIN]
    assert meta["validation"]["passed"]
    nodes = [n for n in onnx.load(str(folder / "encoder_model.onnx")).graph.node if n.domain == ops.DOMAIN]
    assert len(nodes) == converted.model.config.encoder_layers
    ort_model = load_ort_model(folder)  # registers the library
    model = converted.model.eval()
    globals_ = model.config.num_global_tokens
    generator = torch.Generator().manual_seed(11)
    for length in (1, 7, 8, 9, 16, 17, 24, 25, SEQ):
        ids, mask = prompts("bart", length, generator)
        with torch.no_grad():
            expected = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ort_model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        assert got.shape == expected.shape == (2, globals_ + length, model.config.d_model)
        real = torch.cat([torch.ones(2, globals_, dtype=torch.bool), mask.bool()], dim=1)
        assert (got - expected).abs()[real].max().item() <= 1e-5, length
        if length in (9, 17, SEQ):
            settings = dict(max_new_tokens=10, min_new_tokens=10, num_beams=1, do_sample=False)
            with torch.no_grad():
                tokens = model.generate(input_ids=ids, attention_mask=mask, **settings)
            assert torch.equal(ort_model.generate(input_ids=ids, attention_mask=mask, **settings), tokens), length


# --- lsg-export bench ---------------------------------------------------------------------------

SEQ2SEQ_BACKENDS = ["torch-lsg", "torch-dense", "ort-gather", "ort-custom-op"]


def test_bench_reports_encoder_latency_and_generation(exports, tmp_path, monkeypatch):
    """--quick on the bart export, batch 2: torch-lsg, torch-dense, ort-gather (the export) and ort-custom-op
    (made into the model's bench-exports) each give the encoder's latency and greedy generation's tokens/s;
    the encoder-only backends are left out with a note."""
    from lsg_export import ops
    from lsg_export.errors import LSGExportError
    try:
        ops.library_path()
        have_ops = True
    except LSGExportError:
        have_ops = False
    monkeypatch.chdir(tmp_path)
    converted, folder, _ = exports["bart"]
    result = invoke("bench", folder, "--quick", "--seq", f"17,{SEQ}", "--batch-size", "2", "--threads", "1",
                    "--json", tmp_path / "b.json", "--csv", tmp_path / "b.csv", "--plot", tmp_path / "b.png")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "not run: torch-chunked, torch-longformer (encoder-only baseline)" in result.stderr
    assert "gen tokens/s" in result.stdout
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["target"]["seq2seq"] is True and data["target"]["task"] == "text2text-generation"
    assert data["target"]["export_kind"] == "ort-gather"
    settings = data["settings"]
    assert settings["backends"] == SEQ2SEQ_BACKENDS and settings["new_tokens"] == 8 and settings["lengths"] == [17, SEQ]
    assert set(settings["skipped_backends"]) == {"torch-chunked", "torch-longformer",
                                                 "ort-gather-optimized", "ort-int8"}
    assert data["backends"]["ort-gather"]["export"] == str(folder)
    assert data["backends"]["torch-dense"]["note"] == "BartForConditionalGeneration, attention sdpa"
    op_export = converted.path / "bench-exports" / "ort-custom-op"
    assert data["backends"]["ort-custom-op"]["export"] == (str(op_export) if have_ops else None)
    assert [(r["backend"], r["length"]) for r in data["results"]] == [(b, n) for b in SEQ2SEQ_BACKENDS for n in (17, SEQ)]
    torch_generate = {r["length"]: r["generate_p50_ms"] for r in data["results"] if r["backend"] == "torch-lsg"}
    for row in data["results"]:
        if row["backend"] == "ort-custom-op" and not have_ops:
            assert row["status"] == "failed" and "build-ops" in row["reason"]
            continue
        assert row["status"] == "ok", row
        assert row["p50_ms"] > 0 and row["batch"] == 2
        assert row["new_tokens"] == 8 and row["generate_runs"] == 2 == len(row["generate_times_ms"])
        assert row["generate_p50_ms"] > row["p50_ms"]  # generation runs the encoder, then 8 decoder steps
        assert row["tokens_per_s"] == pytest.approx(2 * row["length"] / row["p50_ms"] * 1000, rel=1e-3)
        assert row["generate_tokens_per_s"] == pytest.approx(2 * 8 / row["generate_p50_ms"] * 1000, rel=1e-3)
        assert 0 < row["decode_p50_ms"] < row["generate_p50_ms"]  # each run: the decoder's part of it
        assert row["decode_tokens_per_s"] == pytest.approx(2 * 8 / row["decode_p50_ms"] * 1000, rel=1e-3)
        assert row["generate_speedup_vs_torch_lsg"] == pytest.approx(torch_generate[row["length"]] / row["generate_p50_ms"],
                                                                     rel=2e-3)
        assert row["peak_memory_mb"] >= 0 and row["generate_peak_memory_mb"] >= 0
    per_length = data["summary"]["2"]["per_length"][str(SEQ)]
    assert per_length["fastest_generate"] in SEQ2SEQ_BACKENDS
    assert per_length["best_ort_generate_vs_torch_lsg"]["backend"].startswith("ort-")
    with open(tmp_path / "b.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["generate_tokens_per_s"]) for r in rows[:2]] == [r["generate_tokens_per_s"] for r in data["results"][:2]]
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_generation_runs_full_rows_and_times_the_decoding(exports):
    from lsg_export.bench.backends import BACKENDS
    runner = BACKENDS["torch-lsg"].load({"model": str(exports["bart"][0].path), "device": "cpu",
                                         "task": "text2text-generation"})
    generation = runner.generate(3, 17, 4)
    assert generation.inputs["input_ids"].shape == (3, 17) and bool(generation.inputs["attention_mask"].all())
    assert generation.settings == dict(max_new_tokens=4, min_new_tokens=4, num_beams=1, do_sample=False)
    generation()
    generation()
    assert len(generation.decode_seconds) == 2 and min(generation.decode_seconds) > 0


def test_bench_refuses_what_does_not_apply(exports, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    converted = exports["bart"][0].path
    assert_user_error(invoke("bench", converted, "--backends", "torch-lsg,torch-chunked"),
                      "torch-chunked does not run encoder-decoders", "for them: torch-lsg, torch-dense, ort-gather, ort-custom-op")
    assert_user_error(invoke("bench", converted, "--backends", "ort-int8"), "ort-int8 does not run encoder-decoders")
    assert_user_error(invoke("bench", converted, "--new-tokens", "0"), "--new-tokens must be a positive integer")
    model = convert_tiny(tiny_checkpoint("bart"), tmp_path / "lsg-bart-model", "bart", head="Model")
    assert_user_error(invoke("bench", model.path), "bench times encoder-decoders generating",
                      "holds a BartModel, not a BartForConditionalGeneration")
