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


@pytest.mark.exhaustive  # ~55 s: the default suite covers int8 folders on the tiny model (--keep-float below)
@pytest.mark.xdist_group("minilm")  # with the MiniLM export's other tests (one worker exports it)
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


@pytest.fixture(scope="module")
def float32_folders(tiny_export):
    """{attention: (folder, CLI result)} of --weights none --precision f32 for both attentions."""
    made = {}
    for attention in ("sdpa", "gather"):
        out = tiny_export / f"ov-f32-{attention}"
        made[attention] = out, invoke("openvino", tiny_export / "onnx", "-o", out, "--weights", "none",
                                      "--precision", "f32", "--attention", attention, "--json")
    return made


@pytest.mark.parametrize("attention", ["sdpa", "gather"])
def test_float32_folder_is_held_to_the_tolerance(float32_folders, attention):
    """--weights none --precision f32: float32 weights in the IR, validation enforced at the export's atol, with
    the block attention as OpenVINO's fused attention (sdpa, the default) and as the export's gather graph."""
    import openvino as ov
    out, result = float32_folders[attention]
    assert result.exit_code == 0, (result.output, result.exception)
    info = json.loads(result.stdout)
    assert info["weights"] == {"mode": "none"} and "inference precision f32" in info["validated_with"]
    assert info["attention"] == attention and info["precision"] == "f32" and info["compile_config"] == {}
    ops = {op.get_type_name() for op in ov.Core().read_model(str(out / "openvino_model.xml")).get_ordered_ops()}
    assert ("ScaledDotProductAttention" in ops) == (attention == "sdpa"), sorted(ops)
    validation = info["validation"]
    assert validation["enforced"] is True and validation["inputs"] == "random ids" and validation["passed"]
    assert validation["lengths"] == [1, 9, 128] and 0 < validation["max_abs_diff"] < 1e-4
    from lsg_export.openvino.weights import int8_weight_count
    assert int8_weight_count(ov.Core().read_model(str(out / "openvino_model.xml"))) == 0


def element_types(op):
    return [op.input_value(i).get_element_type().get_type_name() for i in range(op.get_input_size())]


def test_mixed_precision_writes_bf16_where_no_key_is_selected(float32_folders):
    """explicit_bf16 on the float32 SDPA IR: the weight MatMuls and the fused attentions read bf16, but for the
    key projections a norm selection (TopK) reads; TopK, the layer norms and the outputs stay float32. Where the
    CPU has native bf16, compiled at f32 it runs its products in bf16 (close to float32, not equal) and TopK
    in float32."""
    import openvino as ov

    from lsg_export.openvino.mixed_precision import explicit_bf16, selection_inputs
    from lsg_export.openvino.runtime import bf16_support, compile_graph
    path = str(float32_folders["sdpa"][0] / "openvino_model.xml")
    model = ov.Core().read_model(path)
    kept = selection_inputs(model)
    counts = explicit_bf16(model)
    def weight(op):  # the MatMul's second input, through the rewrite's Convert
        node = op.input_value(1).get_node()
        return node.input_value(0).get_node() if node.get_type_name() == "Convert" else node
    weight_matmuls = [op for op in model.get_ordered_ops()
                      if op.get_type_name() == "MatMul" and weight(op).get_type_name() == "Constant"]
    selected = [op for op in weight_matmuls if op.get_friendly_name() in kept]
    assert len(weight_matmuls) == 12 and len(selected) == 2  # 2 layers x 6; one key projection a layer
    for op in weight_matmuls:
        assert element_types(op) == (["f32", "f32"] if op in selected else ["bf16", "bf16"]), op
    assert counts[("MatMul", "bf16")] == 10 and counts[("ScaledDotProductAttention", "bf16")] == 2
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("TopK", "MVN", "Result"):
            assert element_types(op)[0] == "f32", op
        if op.get_type_name() == "ScaledDotProductAttention":
            assert element_types(op)[:3] == ["bf16"] * 3, op
    if not bf16_support()[0]:
        return  # compiled without native bf16, OpenVINO would not run the bf16 nodes as they run on such CPUs
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 1000, (1, 128))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    mixed = compile_graph(model, 1, "f32")
    plain = compile_graph(path, 1, "f32")
    got, expected = mixed(feeds)[mixed.outputs[0]], plain(feeds)[plain.outputs[0]]
    cosine = (got * expected).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(expected, axis=-1)
    assert 0.99 < cosine.min() and cosine.mean() < 0.999999, cosine
    runtime = {}
    for op in mixed.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        runtime.setdefault(info["layerType"].astype(str), set()).add(info["runtimePrecision"].astype(str))
    assert "bf16" in runtime["FullyConnected"] and runtime["TopK"] == {"f32"}, runtime


def test_mixed_precision_folder_says_how_to_compile_it(tiny_export):
    """--weights none --precision mixed (CPUs with native bf16): the IR's weight MatMuls in bf16 but for the key
    projections, the record says to compile at f32, the validation reported (not held to float32's atol; random
    ids: the tiny model has no tokenizer). On the export's gather graph (the SDPA graph's rewrite is above)."""
    import openvino as ov

    from lsg_export.openvino.runtime import bf16_support
    native, evidence = bf16_support()
    if not native:
        pytest.skip(f"--precision mixed needs native bf16 ({evidence}); its refusal is tested below")
    out = tiny_export / "ov-mixed"
    result = invoke("openvino", tiny_export / "onnx", "-o", out, "--weights", "none", "--precision", "mixed",
                    "--attention", "gather", "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    info = json.loads(result.stdout)
    assert info["precision"] == "mixed" and info["compile_config"] == {"INFERENCE_PRECISION_HINT": "f32"}
    # 2 layers x (q, k, v, o and the feed-forward's 16 row tiles x 2) weight MatMuls, less the 2 key projections
    assert info["weights"]["bf16"] == {"MatMul": 70} and info["attention"] == "gather"
    assert "(mixed)" in info["validated_with"]
    validation = info["validation"]
    assert validation["enforced"] is False and validation["inputs"] == "random ids"
    assert 0.99 < validation["min_token_cosine"] < 1.0
    model = ov.Core().read_model(str(out / "openvino_model.xml"))
    assert sum(op.get_type_name() == "MatMul" and element_types(op) == ["bf16", "bf16"]
               for op in model.get_ordered_ops()) == 70
    shown = invoke("openvino", tiny_export / "onnx", "-o", out, "--weights", "none", "--precision", "mixed",
                   "--attention", "gather", "--force")  # the summary a user reads says the same
    assert shown.exit_code == 0 and "70 MatMul in bf16" in " ".join(shown.stderr.split()), shown.output
    assert "compile with {'INFERENCE_PRECISION_HINT': 'f32'}" in " ".join(shown.stderr.split())


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
    assert_user_error(invoke("openvino", source, "--precision", "mixed", "-o", tmp_path / "x"),
                      "--precision mixed", "--weights none")
    monkeypatch.setattr(runtime, "cpu_capabilities", lambda: ["FP32", "INT8"])
    assert_user_error(invoke("openvino", source, "--precision", "bf16", "-o", tmp_path / "b"), "no native bf16")
    assert_user_error(invoke("openvino", source, "--precision", "mixed", "--weights", "none", "-o", tmp_path / "b"),
                      "--precision mixed", "no native bf16")
    assert not any(p.name in ("g", "i", "b", "m", "x") for p in tmp_path.iterdir())  # nothing half-written
