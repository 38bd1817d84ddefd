"""`lsg-export onnx` and `lsg-export validate` on the command line: an export from the last converted
folder, exit code 1 when validation fails (folder kept, failure recorded), and every bad input as one
'error:' line with a non-zero exit code, no traceback and nothing written."""
import json
from pathlib import Path

import pytest

import _onnx_cases as cases
from _cli import assert_user_error, invoke


SEQ = ["--seq", "24"]


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny LSG bert (ForSequenceClassification, 64 positions, blocks of 8) and its original."""
    root = tmp_path_factory.mktemp("cli-models")
    folder = cases.convert_case(cases.Case("cli-bert", "bert", "ForSequenceClassification",
                                           dict(sparsity_type="norm")), root)
    return folder, root / "original-bert"


@pytest.mark.quick
def test_export_from_last_convert_then_validate(converted, tmp_path, monkeypatch):
    """No MODEL: the folder `convert` last wrote from the cwd; a task override; the table; then
    `validate` (default folder: the last export) as JSON, with --atol 0 failing with exit code 1."""
    _, original = converted
    monkeypatch.chdir(tmp_path)
    done = invoke("convert", original, "-o", "lsg-tiny", "--architecture", "BertForSequenceClassification",
                  "--max-sequence-length", "64", "--block-size", "8", "--sparse-block-size", "8")
    assert done.exit_code == 0, done.output
    result = invoke("onnx", *SEQ, "--task", "feature-extraction", "--optimize", "O2")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "lsg-tiny" in result.stderr and "the last folder" in result.stderr
    assert "max |diff|" in result.stdout and "last_hidden_state" in result.stdout
    out = tmp_path / "lsg-tiny" / "onnx"
    assert {"model.onnx", "config.json", "export.json"} <= set(listing(out))
    meta = json.loads((out / "export.json").read_text())
    assert meta["task"] == "feature-extraction" and meta["validation"]["passed"]
    assert meta["optimize"]["level"] == "O2" and meta["optimize"]["nodes_after"] < meta["graph"]["nodes"]
    # the graph list: one graph, its inputs and outputs as export.json's, its nodes after O2
    (graph,) = meta["graphs"]
    assert (graph["name"], graph["file"], graph["external_data"]) == ("model", "model.onnx", False)
    assert graph["inputs"] == meta["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert graph["outputs"] == meta["outputs"] == ["last_hidden_state"]
    assert graph["nodes"] == meta["final_graph"]["nodes"] == meta["optimize"]["nodes_after"]

    check = invoke("validate", "--lengths", "1,9,24", "--batch-size", "3", "--json")
    assert check.exit_code == 0, (check.output, check.exception)
    payload = json.loads(check.stdout)
    assert payload["passed"] and payload["lengths"] == [1, 9, 24] and payload["batch_size"] == 3

    failing = invoke("validate", out, "--lengths", "5,17", "--atol", "0")
    assert failing.exit_code == 1, failing.output
    assert "validation failed" in failing.stderr and "length 5, 17" in failing.stderr
    assert json.loads((out / "export.json").read_text())["validation"]["passed"] is False


def test_failed_validation_exits_1_and_keeps_the_folder(converted, tmp_path, monkeypatch):
    """--atol 0: exit code 1, the failing lengths named, OUT kept with the failure in export.json.
    Weights forced into external data (as for a model over 2 GB): ONNX Runtime still loads OUT."""
    from lsg_export.onnx import pipeline
    monkeypatch.setattr(pipeline, "EXTERNAL_DATA_BYTES", 0)
    folder, _ = converted
    out = tmp_path / "out"
    result = invoke("onnx", folder, "-o", out, *SEQ, "--task", "feature-extraction", "--atol", "0",
                    "--lengths", "3,20")
    assert result.exit_code == 1, (result.output, result.exception)
    assert "validation failed" in result.stderr and "at length 3, 20" in result.stderr
    assert "Traceback" not in result.output
    meta = json.loads((out / "export.json").read_text())
    assert meta["validation"]["passed"] is False and meta["validation"]["failed_lengths"] == [3, 20]
    assert meta["graph"]["external_data"] and (out / "model.onnx.data").is_file()
    assert meta["graphs"][0]["external_data"] and meta["graphs"][0]["file"] == "model.onnx"
    assert (out / "model.onnx").stat().st_size < (out / "model.onnx.data").stat().st_size
    rerun = invoke("validate", out, "--lengths", "3,20")  # default atol: the differences are tiny
    assert rerun.exit_code == 0, rerun.output


@pytest.mark.parametrize("options, fragment", [
    (["--task", "translation"], "unknown task 'translation'"),
    (["--task", "fill-mask"], "needs a BertForMaskedLM or BertForPreTraining"),
    (["--seq", "65"], "--seq 65 is outside 1..64"),
    (["--seq", "0"], "--seq 0"),
    (["--fp16"], "--fp16 is for CUDA"),
    (["--fp16", "--device", "cpu"], "--fp16 is for CUDA"),
    (["--device", "tpu"], "unknown --device"),
    (["--opset", "17"], "--opset 17 is below 18"),
    (["--opset", "99"], "--opset 99 is above"),
    (["--optimize", "O9"], "unknown --optimize level"),
    (["--quantize", "int4"], "unknown --quantize"),
    (["--attention", "dense"], "unknown attention kind 'dense'; available: gather, custom-op"),
    (["--lengths", "1,100"], "outside 1..64"),
    (["--lengths", "a,b"], "comma-separated integers"),
    (["--atol", "-1"], "--atol must be positive"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--pooling", "mean"], "--pooling mean pools the last hidden state: it needs --task feature-extraction"),
])
@pytest.mark.quick
def test_bad_options(converted, tmp_path, options, fragment):
    folder, _ = converted
    before = listing(folder.parent)
    result = invoke("onnx", folder, "-o", tmp_path / "out", *options)
    assert_user_error(result, fragment)
    assert not (tmp_path / "out").exists() and listing(folder.parent) == before


def test_not_a_converted_folder(converted, tmp_path):
    _, original = converted
    assert_user_error(invoke("onnx", original, "-o", tmp_path / "out"), "not a converted LSG model folder")
    assert_user_error(invoke("onnx", tmp_path / "missing"), "no such folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(invoke("onnx", empty), "no config.json")
    assert listing(tmp_path) == ["empty"]


def test_no_model_and_no_previous_convert(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_user_error(invoke("onnx"), "name a folder")
    assert_user_error(invoke("validate"), "name a folder")
    assert listing(tmp_path) == []


def test_existing_output_needs_force(converted, tmp_path):
    folder, _ = converted
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_user_error(invoke("onnx", folder, "-o", out, *SEQ), "--force")
    assert listing(out) == ["keep.txt"]


def test_failed_export_leaves_nothing(converted, tmp_path, monkeypatch):
    import torch

    def broken(*args, **kwargs):
        raise RuntimeError("Could not guard on data-dependent expression u0 < 3\nmore detail")

    monkeypatch.setattr(torch.export, "export", broken)
    folder, _ = converted
    result = invoke("onnx", folder, "-o", tmp_path / "out", *SEQ)
    assert_user_error(result, "the ONNX export failed (RuntimeError: Could not guard on data-dependent")
    assert listing(tmp_path) == []  # neither the output nor a temporary folder beside it


@pytest.mark.quick
def test_validate_bad_inputs(converted, tmp_path):
    folder, _ = converted
    assert_user_error(invoke("validate", folder), "not a folder `lsg-export onnx` wrote")
    assert_user_error(invoke("validate", tmp_path / "nothing"), "no such folder")


def test_short_graph_is_named(converted, tmp_path):
    """--pooling mean: model_short.onnx (inputs of at most two blocks of 8) beside model.onnx, named in the summary
    and export.json, its validation rows beside model.onnx's (the bench's exports leave it out: test_bench.py)."""
    folder, _ = converted
    result = invoke("onnx", folder, "-o", tmp_path / "out", *SEQ, "--task", "feature-extraction", "--pooling", "mean",
                    "--lengths", "1,9")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "model_short.onnx up to 16 tokens" in result.stderr
    meta = json.loads((tmp_path / "out" / "export.json").read_text())
    assert meta["short_graph"]["max_tokens"] == 16 and (tmp_path / "out" / "model_short.onnx").is_file()
    assert meta["validation"]["passed"] and any("model_short.onnx" in row["output"]
                                                for row in meta["validation"]["rows"])
