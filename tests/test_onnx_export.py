"""ONNX export (gather attention): one graph correct at every length, for every family and task.

Each export runs when a test first needs it (tests/_onnx_cases.py, the `exported` fixture of
conftest.py): every family x head (task) on tiny random checkpoints with the LSG options spread over
the cases (a covering set in the default tier, the rest with -m exhaustive), a few extra cases (lsh,
int8, O3, a task override) and the bundled MiniLM at --seq 4096. Each tiny case is compared with
PyTorch at every length 1..40 (5 blocks of 8) and batch sizes 1, 2, 3 with padding."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import _onnx_cases as cases
from lsg_export.errors import LSGExportError
from lsg_export.onnx import TASKS, export_onnx, validate_onnx
from lsg_export.onnx.rewrites import row_tiles
from lsg_export.onnx.tasks import HEAD_TASKS

MATRIX = cases.matrix_cases()
EXTRA = {case.name: case for case in cases.extra_cases()}


result = cases.case_result  # the `exported` fixture (conftest.py) runs an export when a test first needs it
by_name = {case.name: case for case in MATRIX}
in_group = pytest.mark.xdist_group  # tests of one export case run in one pytest-xdist worker


# --- every family x task, every sparsity type: parity at every length ---------------------------

@pytest.mark.parametrize("case", cases.params(MATRIX))
def test_parity_at_every_length(exported, case):
    cases.check_dense_parity(exported, case)


def test_matrix_covers_families_tasks_and_options():
    from lsg_export.families import FAMILIES
    assert {(c.model_type, c.head) for c in MATRIX} == {(f, h) for f in FAMILIES for h in FAMILIES[f].heads}
    assert {HEAD_TASKS[c.head] for c in MATRIX} == set(TASKS)
    seen = {(c.lsg["sparsity_type"], c.lsg["num_global_tokens"], c.lsg["mask_first_token"]) for c in MATRIX}
    assert seen >= {(s, g, m) for s in cases.SPARSITY_TYPES for g in (1, 7) for m in (False, True)}


def test_default_tier_covers_the_matrix():
    """The default suite's covering set: every family, head, sparsity type (lsh included), G in {1, 7},
    mask_first_token on and off, sparsity factor 2 and 4 and every --optimize level at least once."""
    from lsg_export.families import FAMILIES
    default = [c for c in MATRIX if not c.exhaustive]
    assert {c.model_type for c in default} == set(FAMILIES)
    assert {c.head for c in default} == {h for f in FAMILIES for h in FAMILIES[f].heads}
    assert {c.lsg["sparsity_type"] for c in default} == set(cases.SPARSITY_TYPES) | {"lsh"}
    assert {c.lsg["num_global_tokens"] for c in default} >= {1, 7}
    assert {c.lsg["mask_first_token"] for c in default} == {False, True}
    assert {c.lsg["sparsity_factor"] for c in default} == {2, 4}
    assert {c.export.get("optimize") for c in default} == {None, "O1", "O2"}
    assert set(cases.DEFAULT_TIER) <= {c.name for c in MATRIX + cases.extra_cases() + cases.custom_op_cases()
                                       + cases.pooling_cases()}


@pytest.mark.parametrize("case", cases.params([c for c in MATRIX if not c.export]))
def test_raw_graph_is_standard_onnx(exported, case):
    """No op outside the standard domain, symbolic batch / sequence dims named as optimum does, IR <= 13;
    onnx.checker and ONNX Runtime's symbolic shape inference accept it."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    data = result(exported, case.name)
    model = onnx.load(str(Path(data["onnx"]) / "model.onnx"))
    assert {node.domain for node in model.graph.node} <= {""}, case.name
    assert not model.functions
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert model.ir_version <= 13
    axes = ["batch_size", "num_choices", "sequence_length"] if data["task"] == "multiple-choice" \
        else ["batch_size", "sequence_length"]
    for value in model.graph.input:
        assert [d.dim_param for d in value.type.tensor_type.shape.dim] == axes, (case.name, value)
    assert [v.name for v in model.graph.output] == list(TASKS[data["task"]].outputs)
    # the CPU rewrites (onnx/rewrites): each of the 2 layers' residual additions before LayerNormalization
    # is one Sum, the feed-forward block's once per row tile where its activation is exact GELU (row_tiles),
    # and every exact GELU ends on its * 0.5, the spelling ONNX Runtime fuses
    kinds = [node.op_type for node in model.graph.node]
    tiles = row_tiles.TILES if case.model_type != "albert" else 1  # ALBERT: gelu_new, no rewrite
    assert kinds.count("Sum") == 2 + 2 * tiles, (case.name, kinds.count("Sum"))
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type == "Erf":
            add = next(n for n in model.graph.node if node.output[0] in n.input)
            mul = next(n for n in model.graph.node if add.output[0] in n.input)
            assert all(name in producers for name in mul.input), case.name  # x * (1 + erf): no constant yet
    onnx.checker.check_model(model)  # the export checked it; again here, explicitly
    assert SymbolicShapeInference.infer_shapes(model, auto_merge=True) is not None


@pytest.mark.parametrize("case", cases.params(MATRIX))
def test_inputs_follow_the_family(exported, case):
    data = result(exported, case.name)
    expected = ["input_ids", "attention_mask"] + (["token_type_ids"] if case.model_type in ("bert", "albert")
                                                  else [])
    assert data["info"]["inputs"] == expected


@in_group("bert-Model")
def test_export_json(exported):
    data = result(exported, "bert-Model")
    meta = json.loads((Path(data["onnx"]) / "export.json").read_text())
    assert set(meta["versions"]) >= {"torch", "transformers", "onnx", "onnxruntime"}
    assert meta["opset"] == 18 and meta["task"] == "feature-extraction" and meta["attention"] == "gather"
    assert meta["lsg"]["block_size"] == cases.BLOCK and meta["lsg"]["sparsity_type"] == "norm"
    assert meta["seq"] == cases.SEQ and meta["optimize"] is None and meta["precision"] == "fp32"
    assert meta["validation"]["passed"] and meta["validation"]["lengths"] == [1, cases.BLOCK + 1, cases.SEQ]
    folder = Path(data["onnx"])
    assert {"model.onnx", "config.json", "export.json"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == "bert"
    assert config["max_position_embeddings"] == cases.SEQ


@pytest.mark.parametrize("case", cases.params(MATRIX))
def test_optimum_loads_the_folder(exported, case):
    """optimum.onnxruntime's ORTModelFor<task> loads OUT (no trust_remote_code) and matches PyTorch."""
    import optimum.onnxruntime

    from lsg_export.onnx.pipeline import load_torch_model
    from lsg_export.onnx.tasks import TaskModule, make_inputs, read_model_folder
    data = result(exported, case.name)
    task = TASKS[data["task"]]
    ort_model = getattr(optimum.onnxruntime, task.ort_class).from_pretrained(data["onnx"])
    info = read_model_folder(data["folder"])
    inputs = make_inputs(info, data["task"], 2, 21, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = TaskModule(load_torch_model(info), data["task"]).eval()(*inputs.values())
        got = ort_model(**inputs)
    mask = inputs["attention_mask"].bool()
    for name, reference in zip(task.outputs, expected):
        value = torch.as_tensor(np.asarray(getattr(got, name)))
        if reference.shape[:mask.dim()] == mask.shape:
            reference, value = reference[mask], value[mask]
        assert (value - reference).abs().max().item() <= 1e-4, name


@pytest.mark.parametrize("case", cases.params([by_name["bert-Model"], by_name["roberta-Model"]]))
def test_input_longer_than_seq_fails(exported, case):
    """--seq cuts the position table: a longer input is an error in the graph, not an unchecked result."""
    import onnxruntime as ort

    from lsg_export.onnx.tasks import make_inputs, read_model_folder
    data = result(exported, case.name)
    info = read_model_folder(data["folder"])
    session = ort.InferenceSession(str(Path(data["onnx"]) / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = [i.name for i in session.get_inputs()]
    inputs = make_inputs(info, data["task"], 1, cases.SEQ + 1)
    with pytest.raises(Exception):
        session.run(None, {k: inputs[k].numpy() for k in feeds})


# --- optimisation and quantisation ---------------------------------------------------------------

@pytest.mark.parametrize("case", cases.params([c for c in MATRIX if c.export.get("optimize")]))
def test_optimize_keeps_parity_and_removes_nodes(exported, case):
    level = case.export["optimize"]
    data = result(exported, case.name)
    summary = data["info"]["optimize"]
    assert summary["level"] == level
    assert summary["nodes_after"] < data["info"]["graph"]["nodes"], (case.name, summary)
    assert data["dense"]["max_diff"] <= 1e-4
    model = onnx.load(str(Path(data["onnx"]) / "model.onnx"))
    ops = {node.op_type for node in model.graph.node}
    if level == "O2":
        assert {"SkipLayerNormalization", "BiasGelu"} & ops or "LayerNormalization" in ops, (case.name, ops)
        assert summary["fused"], summary


@in_group("distilbert-ForTokenClassification")
def test_o3_gelu_approximation_is_close(exported, tmp_path):
    """O3 (FastGelu, the tanh approximation) on a copy of a raw export: close to PyTorch, not equal."""
    import shutil

    from lsg_export.onnx.optimize import optimize_graph
    data = result(exported, "distilbert-ForTokenClassification")
    copy = tmp_path / "o3"
    shutil.copytree(data["onnx"], copy)
    config = json.loads((copy / "config.json").read_text())
    summary = optimize_graph(copy / "model.onnx", "O3", config, "cpu", False)
    assert summary["gelu_approximation"] and summary["nodes_after"] < data["info"]["graph"]["nodes"]
    assert "FastGelu" in {node.op_type for node in onnx.load(str(copy / "model.onnx")).graph.node}
    dense = cases.dense_compare(copy, data["folder"], data["task"], range(1, cases.SEQ + 1, 3), (2,))
    assert 0 < dense["max_diff"] <= 1e-2


@in_group("int8")
def test_int8_runs_and_reports_its_error(exported):
    data = result(exported, "int8")
    info = data["info"]
    assert info["precision"] == "int8" and info["quantize"]["quantized_matmuls"] > 0
    validation = info["validation"]
    assert validation["enforced"] is False and validation["passed"] is True  # reported, never failed
    assert 0 < validation["max_abs_diff"] < 1  # the accuracy change is there, in the report
    model = onnx.load(str(Path(data["onnx"]) / "model.onnx"))
    assert {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"} & {n.op_type for n in model.graph.node}
    assert model.ir_version <= 13 and info["final_graph"]["ir_version"] == model.ir_version


@in_group("roberta-Model")
def test_fp16_conversion_keeps_float32_io(exported, tmp_path):
    """--fp16 is for CUDA (none here): the conversion of a copy, checked for its structure; ONNX
    Runtime's CPU provider still runs it (inserting casts), and gives finite outputs."""
    import shutil

    import onnxruntime as ort

    from lsg_export.onnx.optimize import to_float16
    from lsg_export.onnx.tasks import make_inputs, read_model_folder
    data = result(exported, "roberta-Model")
    copy = tmp_path / "fp16"
    shutil.copytree(data["onnx"], copy)
    to_float16(copy / "model.onnx", False)
    model = onnx.load(str(copy / "model.onnx"))
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.INT64 for v in model.graph.input)
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in model.graph.output)
    floats = [i.data_type for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT,
                                                                               onnx.TensorProto.FLOAT16)]
    assert floats and all(t == onnx.TensorProto.FLOAT16 for t in floats)
    session = ort.InferenceSession(str(copy / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = make_inputs(read_model_folder(data["folder"]), "feature-extraction", 2, 29)
    out = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    assert out.dtype == np.float32 and np.isfinite(out).all()


@in_group("albert-ForMultipleChoice")
def test_lsh_exported_after_eager_forward(exported):
    lsh = [case for case in MATRIX if case.lsg["sparsity_type"] == "lsh"]
    assert len(lsh) == 1
    data = result(exported, lsh[0].name)
    assert data["info"]["lsg"]["sparsity_type"] == "lsh"
    assert data["dense"]["first_bad"] is None and data["dense"]["max_diff"] <= 1e-4


# --- the real MiniLM at 4096 ------------------------------------------------------------------

@in_group("minilm")
def test_minilm_4096(exported):
    data = result(exported, "minilm")
    report = data["report"]
    assert data["passed"] and report["passed"], report
    assert report["lengths"] == cases.MINILM_LENGTHS and report["batch_size"] == 2
    assert report["max_abs_diff"] <= 1e-4
    main, short = [[row for row in report["rows"] if ("model_short.onnx" in row["output"]) == s] for s in (0, 1)]
    assert {row["length"] for row in main} == set(cases.MINILM_LENGTHS)
    # model_short.onnx, MiniLM's inputs of at most 2 blocks of 128, validated at its own lengths
    assert data["info"]["short_graph"]["max_tokens"] == 256
    assert {row["length"] for row in short} == {1, 2, 127, 128, 129, 255, 256}
    assert all(row["ok"] and row["max_abs_diff"] <= 1e-4 for row in short)
    assert data["info"]["seq"] == 4096 and data["info"]["task"] == "feature-extraction"
    assert data["info"]["graph"]["domains"] == [""]


@in_group("minilm")
def test_minilm_with_optimum_and_real_text(exported, tmp_path):
    """The MiniLM folder: ORTModelForFeatureExtraction + its tokenizer on a long text, and
    `validate --text` on a real document."""
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer
    data = result(exported, "minilm")
    text = Path(__file__).read_text() * 3
    tokenizer = AutoTokenizer.from_pretrained(data["onnx"])
    assert tokenizer.model_max_length == 4096
    encoded = tokenizer([text, "a short one"], padding=True, truncation=True, max_length=700, return_tensors="pt")
    hidden = ORTModelForFeatureExtraction.from_pretrained(data["onnx"])(**encoded).last_hidden_state
    assert hidden.shape == (2, encoded["input_ids"].shape[1], 384)
    document = tmp_path / "doc.txt"
    document.write_text(text)
    report = validate_onnx(data["onnx"], lengths=[1, 300], text=str(document), record=False)
    assert report.passed and report.inputs == "text doc.txt"


# --- the gather backend's block attention is lsg_attention's -----------------------------------

@pytest.mark.parametrize("sparsity_type", ["none", "norm", "pooling", "stride", "block_stride", "bos_pooling", "lsh"])
def test_gather_block_attention_equals_block_attention(sparsity_type):
    """Bit for bit in eager PyTorch, over globals, block sizes, factors and padding."""
    from types import SimpleNamespace

    from lsg_export.modeling.lsg_attention import LSGAttention
    from lsg_export.onnx.attention import gather_block_attention
    generator = torch.Generator().manual_seed(0)
    checked = 0
    for g, bs, sbs, sf, t, n in [(1, 8, 8, 2, 40, 2), (7, 8, 8, 4, 24, 1), (3, 4, 4, 2, 12, 3), (1, 8, 0, 2, 16, 2),
                                 (2, 8, 16, 2, 48, 2), (1, 16, 8, 1, 32, 1)]:
        config = SimpleNamespace(block_size=bs, sparse_block_size=sbs, sparsity_factor=sf,
                                 sparsity_type=sparsity_type, num_global_tokens=g)
        attention = LSGAttention(config).eval()
        q, k, v = (torch.randn(n, 4, g + t, 16, generator=generator) for _ in range(3))
        mask = torch.zeros(n, t)
        mask[-1, (2 * t) // 3:] = torch.finfo(torch.float32).min
        with torch.no_grad():
            reference = attention(q, k, v, mask)
            attention.block_attention = gather_block_attention
            assert torch.equal(attention(q, k, v, mask), reference), (g, bs, sbs, sf, t, n)
        checked += 1
    assert checked == 6


@pytest.mark.parametrize("sparsity_type", ["none", "norm", "pooling", "stride", "block_stride", "bos_pooling", "lsh"])
def test_sdpa_block_attention_equals_block_attention(sparsity_type):
    """The OpenVINO graph's spelling (openvino/sdpa.py: scaled_dot_product_attention over the blocks folded into
    the heads) gives block_attention's result in float64 to rounding, padding and several globals included."""
    from types import SimpleNamespace

    from lsg_export.modeling.lsg_attention import LSGAttention
    from lsg_export.openvino.sdpa import SDPA_KIND
    generator = torch.Generator().manual_seed(0)
    for g, bs, sbs, sf, t, n in [(1, 8, 8, 2, 40, 2), (7, 8, 8, 4, 24, 1), (2, 8, 16, 2, 48, 2), (1, 16, 8, 1, 32, 1)]:
        config = SimpleNamespace(block_size=bs, sparse_block_size=sbs, sparsity_factor=sf,
                                 sparsity_type=sparsity_type, num_global_tokens=g)
        attention = LSGAttention(config).eval().double()
        q, k, v = (torch.randn(n, 4, g + t, 16, generator=generator, dtype=torch.float64) for _ in range(3))
        mask = torch.zeros(n, t, dtype=torch.float64)
        mask[-1, (2 * t) // 3:] = torch.finfo(torch.float64).min
        with torch.no_grad():
            reference = attention(q, k, v, mask)
            with SDPA_KIND.installed(attention):
                got = attention(q, k, v, mask)
        assert (got - reference).abs().max() < 1e-12 * reference.abs().max(), (g, bs, sbs, sf, t, n)
        assert not torch.equal(got, reference)  # another summation order: the swap took effect


# --- API errors --------------------------------------------------------------------------------

def test_api_errors_write_nothing(tmp_path):
    folder = cases.convert_case(cases.Case("api-bert", "bert", "ForSequenceClassification"), tmp_path)
    with pytest.raises(LSGExportError, match="needs a"):
        export_onnx(folder, tmp_path / "out", task="fill-mask")
    with pytest.raises(LSGExportError, match="unknown task"):
        export_onnx(folder, tmp_path / "out", task="translation")
    with pytest.raises(LSGExportError, match="outside 1..64"):
        export_onnx(folder, tmp_path / "out", seq=65)
    with pytest.raises(LSGExportError, match="--fp16 is for CUDA"):
        export_onnx(folder, tmp_path / "out", fp16=True)
    with pytest.raises(LSGExportError, match="below 18"):
        export_onnx(folder, tmp_path / "out", opset=17)
    with pytest.raises(LSGExportError, match="unknown attention kind"):
        export_onnx(folder, tmp_path / "out", attention="flash")
    assert not (tmp_path / "out").exists()


@in_group("minilm")
def test_minilm_sentence_embedding(exported):
    """MiniLM's pipeline (mean, Normalize) in the graph: sentence_embedding within 1e-4 of PyTorch at every
    validation length, and sentence-transformers' ONNX backend loads both layouts (the export folder, and the
    converted folder with its onnx/ export), giving the graph's own sentence_embedding on a long text."""
    from sentence_transformers import SentenceTransformer
    from lsg_export.onnx.validate import make_session
    data = result(exported, "minilm")
    meta = data["info"]
    assert meta["pooling"] == {"mode": "mean", "normalize": True}
    assert meta["outputs"] == ["last_hidden_state", "sentence_embedding"]
    rows = [row for row in data["report"]["rows"] if row["output"] == "sentence_embedding"]
    assert [row["length"] for row in rows] == cases.MINILM_LENGTHS
    assert all(row["ok"] and row["max_abs_diff"] <= 1e-4 for row in rows)

    text = Path(__file__).read_text()
    onnx_folder = Path(data["onnx"])
    session = make_session(onnx_folder / "model.onnx", "cpu")
    from transformers import AutoTokenizer
    encoded = AutoTokenizer.from_pretrained(onnx_folder)([text], truncation=True, max_length=4096, return_tensors="np")
    assert encoded["input_ids"].shape[1] > 2000
    (direct,) = session.run(["sentence_embedding"], dict(encoded))
    for folder, options in ((onnx_folder, {}), (Path(data["folder"]), {"trust_remote_code": True})):
        model = SentenceTransformer(str(folder), backend="onnx", device="cpu", **options)
        assert model.max_seq_length == 4096
        got = model.encode([text])
        assert got.shape == (1, 384) and np.abs(got - direct).max() <= 1e-5, folder
