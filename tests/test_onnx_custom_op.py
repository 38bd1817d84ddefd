"""`lsg-export onnx --attention custom-op`: one ai.lsg.LSGAttention node per layer.

The exports are the `custom_op_cases` of tests/_onnx_cases.py (each run when a test first needs it)
and the bundled MiniLM at --seq 4096; each tiny case is compared with PyTorch at every length
1..40 and batch sizes 1, 2, 3 with padding."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import _onnx_cases as cases
from _op_cases import half_tolerance
from lsg_export import ops
from lsg_export.errors import LSGExportError
from lsg_export.onnx import load_ort_model, validate_onnx

OP_CASES = cases.custom_op_cases()
DENSE = [case for case in OP_CASES if case.dense]
result = cases.case_result
in_group = pytest.mark.xdist_group  # tests of one export case run in one pytest-xdist worker


def op_nodes(folder):
    model = onnx.load(str(Path(folder) / "model.onnx"), load_external_data=False)
    return [node for node in model.graph.node if node.domain == ops.DOMAIN], model


@pytest.mark.parametrize("case", cases.params(DENSE))
def test_parity_at_every_length(exported, case):
    cases.check_dense_parity(exported, case)


@pytest.mark.parametrize("case", cases.params([c for c in DENSE if "optimize" not in c.export]))
def test_graph_has_one_op_per_layer(exported, case):
    """The raw graph: one ai.lsg node per layer with the model's geometry, nothing else non-standard; its
    export.json says the library is needed."""
    data = result(exported, case.name)
    nodes, model = op_nodes(data["onnx"])
    assert len(nodes) == 2, case.name  # the tiny models have 2 layers
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    sparse = case.lsg["sparsity_type"] != "none"
    assert attributes["block_size"] == cases.BLOCK
    assert attributes["sparse_block_size"] == (cases.BLOCK if sparse else 0)
    assert attributes["sparsity_factor"] == case.lsg.get("sparsity_factor", 2)
    assert attributes["num_global"] == case.lsg.get("num_global_tokens", 1) and attributes["num_heads"] == 4
    # q, k, v straight from their projections: no per-head Transpose of them, nor of the output
    assert [node.op_type for node in nodes] == [ops.LSG_OP_TYPE] * 2 and len(nodes[0].input) == (7 if sparse else 4)
    assert "Transpose" not in {node.op_type for node in model.graph.node} or sparse
    assert {node.domain for node in model.graph.node} <= {"", ops.DOMAIN}
    assert {o.domain: o.version for o in model.opset_import}[ops.DOMAIN] == ops.OP_VERSION
    meta = data["info"]
    assert meta["attention"] == "custom-op" and meta["graph"]["domains"] == ["", ops.DOMAIN]
    assert meta["custom_ops"]["domain"] == ops.DOMAIN and "build-ops" in meta["custom_ops"]["build"]


@in_group("op-albert-ForTokenClassification")
def test_optimize_keeps_the_op(exported):
    optimized = result(exported, "op-albert-ForTokenClassification")
    info = optimized["info"]["optimize"]
    assert info["nodes_after"] < info["nodes_before"] and info["fused"]
    # CPU export: the residual additions stay one Sum each (rewrites/residual_sum), never SkipLayerNormalization
    nodes, model = op_nodes(optimized["onnx"])
    kinds = [node.op_type for node in model.graph.node]
    assert len(nodes) == 2 and "SkipLayerNormalization" not in kinds and kinds.count("Sum") == 4, info["fused"]


@in_group("op-int8")
def test_int8_keeps_the_op(exported):
    quantized = result(exported, "op-int8")
    assert quantized["info"]["quantize"]["quantized_matmuls"] > 0 and len(op_nodes(quantized["onnx"])[0]) == 2
    validation = quantized["info"]["validation"]
    assert not validation["enforced"] and 0 < validation["max_abs_diff"] < 0.5


@in_group("minilm")
def test_same_outputs_as_the_gather_export(exported):
    """The gather and custom-op graphs of the same model agree (both against PyTorch, and directly)."""
    from lsg_export.onnx.validate import make_session
    from lsg_export.onnx.attention_kinds import get_attention_kind
    minilm = result(exported, "minilm")
    ids = torch.randint(1000, 20000, (1, 700), generator=torch.Generator().manual_seed(1))
    feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy()),
             "token_type_ids": np.zeros_like(ids.numpy())}
    gather = make_session(Path(minilm["onnx"]) / "model.onnx", "cpu", get_attention_kind("gather"))
    custom = make_session(Path(minilm["custom_op"]["onnx"]) / "model.onnx", "cpu", get_attention_kind("custom-op"))
    a, b = gather.run(None, feeds)[0], custom.run(None, feeds)[0]
    assert a.shape == b.shape == (1, 700, 384)
    assert np.abs(a - b).max() <= 1e-4


@in_group("minilm")
def test_minilm_custom_op_passes_validate_at_4096(exported):
    data = result(exported, "minilm")["custom_op"]
    assert data["passed"], data["report"]
    assert data["report"]["lengths"] == cases.MINILM_OP_LENGTHS and data["report"]["max_abs_diff"] <= 1e-4
    # MiniLM's mean + Normalize pooling in the custom-op graph too, within 1e-4 like the hidden states
    assert data["info"]["pooling"] == {"mode": "mean", "normalize": True}
    assert "short_graph" not in data["info"] and not (Path(data["onnx"]) / "model_short.onnx").exists()  # left out
    assert [row["output"] for row in data["report"]["rows"]] == ["last_hidden_state", "sentence_embedding"] * 2
    assert len(op_nodes(data["onnx"])[0]) == 6  # MiniLM: 6 layers
    report = validate_onnx(data["onnx"], lengths=[4096], batch_size=1, record=False)
    assert report.passed and report.lengths == [4096] and report.worst().max_abs_diff <= 1e-4


@in_group("op-roberta-ForMaskedLM")
def test_optimum_loads_with_the_library(exported):
    """load_ort_model: optimum's ORTModel class of the task, the library registered; same outputs as PyTorch."""
    from lsg_export.onnx.pipeline import load_torch_model
    from lsg_export.onnx.tasks import read_model_folder
    data = result(exported, "op-roberta-ForMaskedLM")
    model = load_ort_model(data["onnx"])
    assert type(model).__name__ == "ORTModelForMaskedLM"
    ids = torch.randint(5, cases.VOCAB, (2, 29), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    got = model(input_ids=ids, attention_mask=mask).logits
    torch_model = load_torch_model(read_model_folder(data["folder"]))
    with torch.no_grad():
        expected = torch_model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= 1e-4


@in_group("op-bert-Model")
def test_without_the_library_one_clear_line(exported):
    data = result(exported, "op-bert-Model")
    with pytest.raises(LSGExportError, match="lsg-export build-ops") as error:
        ops.inference_session(Path(data["onnx"]) / "model.onnx", with_ops=False)
    assert "\n" not in str(error.value) and ops.DOMAIN in str(error.value)


@in_group("op-bert-Model")
def test_cli_custom_op_export(exported, tmp_path):
    from lsg_export.cli import main
    folder = result(exported, "op-bert-Model")["folder"]
    out = tmp_path / "cli-op"
    run = CliRunner().invoke(main, ["onnx", folder, "--attention", "custom-op", "--seq", "24", "--lengths", "3,24",
                                    "-o", str(out), "--json"])
    assert run.exit_code == 0, run.output
    meta = json.loads((out / "export.json").read_text())
    assert meta["attention"] == "custom-op" and meta["validation"]["passed"] and meta["seq"] == 24
    run = CliRunner().invoke(main, ["validate", str(out), "--lengths", "24", "--json"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout[run.stdout.index("{"):])["passed"]


@in_group("op-bert-Model")
def test_float16_graph_runs_the_op_on_cpu(exported, tmp_path):
    """The float16 conversion (--fp16 is for CUDA) keeps the op, fed float16; ONNX Runtime's CPU provider
    runs it (the op computes in float32) and stays within twice PyTorch's own float16 error (the model in
    float16 on CPU) of float32 PyTorch."""
    import shutil

    from lsg_export.onnx.optimize import to_float16
    from lsg_export.onnx.pipeline import load_torch_model
    from lsg_export.onnx.tasks import make_inputs, read_model_folder
    data = result(exported, "op-bert-Model")
    copy = tmp_path / "fp16"
    shutil.copytree(data["onnx"], copy)
    to_float16(copy / "model.onnx", False)
    nodes, model = op_nodes(copy)
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    assert len(nodes) == 2 and types[nodes[0].input[0]] == onnx.TensorProto.FLOAT16
    session = ops.inference_session(copy / "model.onnx")
    info = read_model_folder(data["folder"])
    inputs = make_inputs(info, "feature-extraction", 2, 37, lengths=[37, 20])
    out = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    model = load_torch_model(info)
    with torch.no_grad():
        expected = model(**inputs).last_hidden_state
        torch_half = model.half()(**inputs).last_hidden_state
    real = inputs["attention_mask"].bool()
    atol = half_tolerance(torch_half[real], expected[real])
    assert out.dtype == np.float32 and np.abs(out[real.numpy()] - expected[real].numpy()).max() <= atol
