"""`lsg-export openvino`: an encoder's gather export as an OpenVINO IR folder, validated against PyTorch."""
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _cli import assert_user_error, invoke
from _onnx_cases import case_result

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
    reason="openvino and nncf are not installed (the openvino extra)")


@pytest.fixture(scope="module")
def tiny_export(tiny_bert, tmp_path_factory):
    """A tiny LSG BertModel (blocks of 8, 128 positions) exported to ONNX (gather) and with --attention custom-op."""
    from lsg_export import convert
    from lsg_export.onnx import export_onnx
    root = tmp_path_factory.mktemp("openvino")
    convert(str(tiny_bert), root / "lsg-tiny", max_sequence_length=128, block_size=8, sparse_block_size=8,
            architecture="BertModel")
    export_onnx(root / "lsg-tiny", root / "onnx", lengths=[1, 9, 128])
    return root


def test_minilm_int8_folder_runs_as_validated(exported, tmp_path):
    """On the real MiniLM-LSG export: the folder holds the IR, the tokenizer and sentence-transformers files;
    the weights are int8 and the group size rides in the model; a plain compile_model of it gives what the
    validation read, close to ONNX Runtime's float32 graph and measurably not equal to it."""
    import onnxruntime as ort
    import openvino as ov

    from lsg_export.onnx.validate import text_ids
    from lsg_export.openvino.weights import group_size_of, int8_weight_count
    source = case_result(exported, "minilm")["onnx"]
    out = tmp_path / "minilm-openvino"
    result = invoke("openvino", source, "-o", out, "--lengths", "129,1000", "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    info = json.loads(result.stdout)
    for name in ("openvino_model.xml", "openvino_model.bin", "tokenizer.json", "config.json", "modules.json",
                 "1_Pooling/config.json", "openvino_export.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.onnx")) and not (out / "export.json").exists()
    assert info["weights"]["mode"] == "int8" and info["weights"]["matrices"] == 39  # 36 MatMuls + 3 embeddings
    assert info["weights"]["activations"]["group_size"] == 128 and info["outputs"] == ["last_hidden_state",
                                                                                         "sentence_embedding"]
    # int8 weights: the IR is about a quarter of the float32 graph
    onnx_bytes = sum(p.stat().st_size for p in Path(source).glob("model.onnx*"))
    assert (out / "openvino_model.bin").stat().st_size < 0.35 * onnx_bytes
    model = ov.Core().read_model(str(out / "openvino_model.xml"))
    assert group_size_of(model) == 128 and int8_weight_count(model) == 39
    validation = info["validation"]
    assert validation["inputs"] == "text GPL-3" and validation["enforced"] is False and validation["passed"]
    rows = {(r["length"], r["output"]): r for r in validation["rows"]}
    for length in (129, 1000):
        hidden, pooled = rows[length, "last_hidden_state"], rows[length, "sentence_embedding"]
        assert 0.999 < hidden["pooled_cosine"] < 0.99999 and 0.95 < hidden["min_token_cosine"] < 0.9999, hidden
        assert 0.999 < pooled["pooled_cosine"] < 0.99999, pooled
    # a user's plain compile_model, on a framed GPL-3 row, against ONNX Runtime's float32 export
    row = text_ids(source, "/usr/share/common-licenses/GPL-3").rows(1, 1000).numpy()
    feeds = {"input_ids": row, "attention_mask": np.ones_like(row), "token_type_ids": np.zeros_like(row)}
    compiled = ov.Core().compile_model(str(out / "openvino_model.xml"), "CPU")
    assert compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == 128
    got = compiled(feeds)[compiled.output("sentence_embedding")]
    session = ort.InferenceSession(f"{source}/model.onnx", providers=["CPUExecutionProvider"])
    expected = session.run(["sentence_embedding"], feeds)[0]
    cosine = float((got * expected).sum() / np.linalg.norm(got) / np.linalg.norm(expected))
    assert 0.999 < cosine < 0.99999


@pytest.mark.parametrize("attention", ["sdpa", "gather"])
def test_float32_folder_is_held_to_the_tolerance(tiny_export, attention):
    """--weights none --precision f32: float32 weights in the IR, validation enforced at the export's atol, with
    the block attention as OpenVINO's fused attention (sdpa, the default) and as the export's gather graph."""
    import openvino as ov
    out = tiny_export / f"ov-f32-{attention}"
    result = invoke("openvino", tiny_export / "onnx", "-o", out, "--weights", "none", "--precision", "f32",
                    "--attention", attention, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    info = json.loads(result.stdout)
    assert info["weights"] == {"mode": "none"} and "inference precision f32" in info["validated_with"]
    assert info["attention"] == attention
    ops = {op.get_type_name() for op in ov.Core().read_model(str(out / "openvino_model.xml")).get_ordered_ops()}
    assert ("ScaledDotProductAttention" in ops) == (attention == "sdpa"), sorted(ops)
    validation = info["validation"]
    assert validation["enforced"] is True and validation["inputs"] == "random ids" and validation["passed"]
    assert validation["lengths"] == [1, 9, 128] and 0 < validation["max_abs_diff"] < 1e-4
    from lsg_export.openvino.weights import int8_weight_count
    assert int8_weight_count(ov.Core().read_model(str(out / "openvino_model.xml"))) == 0


def test_keep_float_keeps_the_weights_that_lose_most(tiny_export):
    """--keep-float 2: every MatMul weight ranked by its int8 loss alone (worst first), the two worst left float
    in the IR (their MatMuls read a float constant, the others int8 through decompression), the rest int8. On
    the export's gather graph, whose weight names the ranking is checked against."""
    import openvino as ov

    from lsg_export.openvino.weights import int8_weight_count, matmuls_by_weight
    out = tiny_export / "ov-keep2"
    result = invoke("openvino", tiny_export / "onnx", "-o", out, "--keep-float", "2", "--attention", "gather",
                    "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    weights = json.loads(result.stdout)["weights"]
    kept, source = weights["kept_float"], ov.Core().read_model(str(tiny_export / "onnx" / "model.onnx"))
    everything = matmuls_by_weight(source)
    ranking = kept["ranking"]
    assert kept["count"] == 2 and len(ranking) == len(everything) == 12  # 2 layers x (q, k, v, o, ffn in, out)
    assert [r["weight"] for r in ranking[:2]] == kept["weights"] and set(kept["weights"]) <= set(everything)
    assert [r["min_token_cosine"] for r in ranking] == sorted(r["min_token_cosine"] for r in ranking)
    assert all(r["min_token_cosine"] < 1.0 for r in ranking)  # each weight alone in int8 changes the output
    model = ov.Core().read_model(str(out / "openvino_model.xml"))
    float_matmuls = sorted(n for names in matmuls_by_weight(model).values() for n in names)
    assert float_matmuls == sorted(n for w in kept["weights"] for n in everything[w])
    assert weights["matrices"] == int8_weight_count(model) == 12 - 2 + 3  # + the 3 embedding tables


def test_bad_input_gets_one_line_and_keeps_the_output(tiny_export, tmp_path, monkeypatch):
    from lsg_export.openvino import runtime
    source = tiny_export / "onnx"
    assert_user_error(invoke("openvino", tmp_path / "missing"), "missing")
    assert_user_error(invoke("openvino", source, "--group-size", "0", "-o", tmp_path / "g"), "--group-size 0")
    assert_user_error(invoke("openvino", source, "--keep-float", "1", "--weights", "none", "-o", tmp_path / "g"),
                      "--keep-float 1", "with int8 weights")
    assert_user_error(invoke("openvino", source, "--keep-float", "13", "-o", tmp_path / "g"),
                      "--keep-float 13", "12 MatMul weights")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert_user_error(invoke("openvino", source, "-o", taken), "not empty", "--force")
    assert (taken / "keep.txt").read_text() == "mine" and len(list(taken.iterdir())) == 1
    assert_user_error(invoke("openvino", source, "-o", source), "not empty")
    int8 = tmp_path / "onnx-int8"  # an int8 export as its export.json says (what the refusal reads)
    shutil.copytree(source, int8)
    meta = json.loads((int8 / "export.json").read_text())
    (int8 / "export.json").write_text(json.dumps({**meta, "quantize": {"quantize": "int8"}, "precision": "int8"}))
    assert_user_error(invoke("openvino", int8, "-o", tmp_path / "i"), "plain float32 gather graph")
    moved = tmp_path / "onnx-moved"  # the PyTorch model export.json names is gone: --model says where it is
    shutil.copytree(source, moved)
    (moved / "export.json").write_text(json.dumps({**meta, "model": str(tmp_path / "gone")}))
    assert_user_error(invoke("openvino", moved, "-o", tmp_path / "m"), "is gone: pass --model")
    monkeypatch.setattr(runtime, "cpu_capabilities", lambda: ["FP32", "INT8"])
    assert_user_error(invoke("openvino", source, "--precision", "bf16", "-o", tmp_path / "b"), "no native bf16")
    assert not any(p.name in ("g", "i", "b", "m") for p in tmp_path.iterdir())  # nothing half-written
