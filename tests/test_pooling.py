"""The pooled `sentence_embedding` output: the checkpoint's sentence-transformers pipeline read, the pooling
module against sentence-transformers' own, and two tiny exports (tests/_onnx_cases.py pooling_cases):
max + Normalize from the pipeline with --optimize O2 (gather), --pooling cls with the custom op and int8.
Mean pooling is MiniLM's (test_onnx_export.py, test_onnx_custom_op.py use its export)."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import _onnx_cases as cases
from lsg_export.errors import LSGExportError
from lsg_export.onnx import validate_onnx
from lsg_export.onnx.pooling import SentencePooling, choose_pooling
from lsg_export.sentence_pipeline import pooling_modes, read_pipeline

result = cases.case_result
in_group = pytest.mark.xdist_group
POOLING = {case.name: case for case in cases.pooling_cases()}


def padded_batch(generator, rows=3, tokens=11, hidden=16):
    """Random hidden states and a right-padded mask: rows of 11, 7 and 1 real tokens."""
    hidden_states = torch.randn(rows, tokens, hidden, generator=generator) * 3
    mask = torch.zeros(rows, tokens, dtype=torch.long)
    for row, real in enumerate([tokens, 7, 1][:rows]):
        mask[row, :real] = 1
    return hidden_states, mask


@pytest.mark.quick
@pytest.mark.parametrize("mode", ["mean", "cls", "max"])
@pytest.mark.parametrize("normalize", [False, True])
def test_pooling_is_sentence_transformers(mode, normalize):
    """SentencePooling gives what sentence-transformers' Pooling (+ Normalize) modules give, padding ignored."""
    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    except ImportError:  # before sentence-transformers 5.3
        from sentence_transformers.models import Normalize, Pooling
    hidden, mask = padded_batch(torch.Generator().manual_seed(0))
    features = {"token_embeddings": hidden.clone(), "attention_mask": mask}
    expected = Pooling(16, pooling_mode=mode)(features)
    if normalize:
        expected = Normalize()(expected)
    expected = expected["sentence_embedding"]
    got = SentencePooling(mode, normalize)(hidden, mask)
    assert got.shape == (3, 16)
    assert (got - expected).abs().max().item() <= 1e-6
    # the padding's values change nothing
    noisy = torch.where(mask.bool().unsqueeze(-1), hidden, torch.full_like(hidden, 1e4))
    assert (SentencePooling(mode, normalize)(noisy, mask) - got).abs().max().item() <= 1e-6
    if normalize:
        assert torch.allclose(got.norm(dim=1), torch.ones(3))


@pytest.mark.quick
def test_reads_the_pipeline(minilm_path, tmp_path):
    pipeline = read_pipeline(minilm_path)
    assert pipeline.modules == ("Transformer", "Pooling", "Normalize")
    assert (pipeline.pooling, pipeline.normalize, pipeline.graph_pooling()) == (("mean",), True, ("mean", None))
    assert read_pipeline(tmp_path) is None
    # sentence-transformers' newer key, a list, the older flags (none set: mean)
    assert pooling_modes({"pooling_mode": "cls"}) == ("cls",)
    assert pooling_modes({"pooling_mode": ["mean", "max"]}) == ("mean", "max")
    assert pooling_modes({"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False}) == ("max",)
    assert pooling_modes({"pooling_mode_mean_tokens": False}) == ("mean",)


@pytest.mark.quick
def test_pooling_choice(tmp_path):
    """The default follows the pipeline; what the graph cannot compute is an error naming the way out."""
    (tmp_path / "st").mkdir()
    folder = cases.write_sentence_pipeline(tmp_path / "st", "max", True)
    assert choose_pooling(folder, "feature-extraction") == {"mode": "max", "normalize": True}
    assert choose_pooling(folder, "feature-extraction", "cls") == {"mode": "cls", "normalize": True}
    assert choose_pooling(folder, "feature-extraction", "none") is None
    assert choose_pooling(folder, "fill-mask") is None  # a head's task: no pooling by default
    assert choose_pooling(tmp_path, "feature-extraction") is None  # no pipeline
    assert choose_pooling(tmp_path, "feature-extraction", "mean") == {"mode": "mean", "normalize": False}
    with pytest.raises(LSGExportError, match="needs --task feature-extraction"):
        choose_pooling(folder, "text-classification", "mean")
    with pytest.raises(LSGExportError, match="unknown --pooling"):
        choose_pooling(folder, "feature-extraction", "sum")
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(LSGExportError, match=r"does not compute \(Transformer -> Pooling -> Dense -> Normalize\)"
                                             r".*--pooling none"):
        choose_pooling(folder, "feature-extraction")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "weightedmean"}))
    with pytest.raises(LSGExportError, match="pools with weightedmean"):
        choose_pooling(folder, "feature-extraction")


def graph_outputs(onnx_folder):
    graph = onnx.load(str(Path(onnx_folder) / "model.onnx"), load_external_data=False).graph
    return [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in graph.output]


def run_graph(data, length=29, file="model.onnx"):
    """The export's outputs on a batch of 3 (rows of length, 19 and 5 real tokens, fewer where length is
    shorter) and its attention mask; file: model.onnx or the short graph."""
    from lsg_export.onnx.pipeline import read_export_folder
    from lsg_export.onnx.tasks import make_inputs, read_model_folder
    from lsg_export.ops import inference_session
    meta = read_export_folder(data["onnx"])
    info = read_model_folder(data["folder"])
    inputs = make_inputs(info, "feature-extraction", 3, length, lengths=[length, min(length, 19), min(length, 5)])
    session = inference_session(Path(data["onnx"]) / file, with_ops=bool(meta.get("custom_ops")))
    hidden, pooled = session.run(["last_hidden_state", "sentence_embedding"],
                                 {i.name: inputs[i.name].numpy() for i in session.get_inputs()})
    return hidden, pooled, inputs["attention_mask"].numpy().astype(bool)


@in_group("pool-max-O2")
@pytest.mark.parametrize("case", cases.params([POOLING["pool-max-O2"]]))
def test_max_normalize_from_the_pipeline(exported, case, tmp_path):
    """The pipeline's max + Normalize, --optimize O2: within 1e-4 of PyTorch at every length 1..40 and batch
    size 1..3; the graph's own hidden states max-pooled over the real tokens; recorded in export.json, the
    pipeline carried into the export, and the Triton repository of `deploy` has the output too."""
    cases.check_dense_parity(exported, case)
    data = result(exported, case.name)
    meta = data["info"]
    assert meta["pooling"] == {"mode": "max", "normalize": True} and meta["optimize"]["level"] == "O2"
    assert meta["outputs"] == meta["graphs"][0]["outputs"] == ["last_hidden_state", "sentence_embedding"]
    assert graph_outputs(data["onnx"]) == [("last_hidden_state", ["batch_size", "sequence_length", 32]),
                                           ("sentence_embedding", ["batch_size", 32])]
    rows = [row for row in meta["validation"]["rows"] if row["output"] == "sentence_embedding"]
    assert [row["length"] for row in rows] == [1, cases.BLOCK + 1, cases.SEQ]
    assert all(row["ok"] and row["max_abs_diff"] <= 1e-4 and row["pooled_cosine"] > 0.99999 for row in rows)

    hidden, pooled, mask = run_graph(data)
    expected = np.where(mask[..., None], hidden, -np.inf).max(1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.abs(pooled - expected).max() <= 1e-5
    assert np.allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)

    onnx_folder = Path(data["onnx"])
    assert json.loads((onnx_folder / "sentence_bert_config.json").read_text())["max_seq_length"] == cases.SEQ
    assert json.loads((onnx_folder / "1_Pooling" / "config.json").read_text())["pooling_mode_max_tokens"]
    assert json.loads((Path(data["folder"]) / "sentence_bert_config.json").read_text())["max_seq_length"] == 64

    # validate reads the pooling back from export.json
    report = validate_onnx(onnx_folder, lengths=[23], batch_size=3, record=False)
    assert report.passed and [row.output for row in report.rows][:2] == ["last_hidden_state", "sentence_embedding"]
    assert {row.output for row in report.rows[2:]} == {f"{name} (model_short.onnx, <= {2 * cases.BLOCK})"
                                                       for name in ("last_hidden_state", "sentence_embedding")}

    pytest.importorskip("tritonclient")
    from lsg_export.deploy import deploy, triton
    repo = deploy(onnx_folder, tmp_path / "repo", name="pooled").path
    config = triton.parse((repo / "pooled" / "config.pbtxt").read_text())
    assert [(o.name, list(o.dims)) for o in config.output] == [("last_hidden_state", [-1, 32]),
                                                               ("sentence_embedding", [32])]


def check_short_graph(data, atol, min_cosine):
    """model_short.onnx (dense attention up to two blocks): recorded with model.onnx's steps, validated at its
    lengths, the same embeddings as model.onnx at every length 1..2 blocks (within atol, cosine >= min_cosine),
    and an input one token longer fails in the graph."""
    import onnxruntime as ort
    meta, limit = data["info"], 2 * cases.BLOCK
    short = meta["short_graph"]
    assert (short["file"], short["max_tokens"]) == ("model_short.onnx", limit)
    assert (short["optimize"] or {}).get("level") == (meta["optimize"] or {}).get("level")
    assert bool(short["quantize"]) == bool(meta["quantize"]) and "ai.lsg" not in short["domains"]
    rows = [row for row in meta["validation"]["rows"] if "model_short.onnx" in row["output"]]
    assert sorted({row["length"] for row in rows}) == [1, 2, cases.BLOCK - 1, cases.BLOCK, cases.BLOCK + 1,
                                                      limit - 1, limit]
    assert all(row["ok"] for row in rows)
    for length in range(1, limit + 1):
        hidden, pooled, mask = run_graph(data, length)
        short_hidden, short_pooled, _ = run_graph(data, length, short["file"])
        assert np.abs(short_hidden - hidden)[mask].max() <= atol and np.abs(short_pooled - pooled).max() <= atol
        cosine = (short_pooled * pooled).sum(1) / np.linalg.norm(short_pooled, axis=1) / np.linalg.norm(pooled, axis=1)
        assert cosine.min() >= min_cosine, (length, cosine)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.Fail):
        run_graph(data, limit + 1, short["file"])


@in_group("pool-max-O2")
@pytest.mark.parametrize("case", cases.params([POOLING["pool-max-O2"]]))
def test_short_graph_equals_model_onnx_up_to_two_blocks(exported, case):
    check_short_graph(result(exported, case.name), 1e-5, 0.99999)


@in_group("op-pool-cls-int8")
@pytest.mark.parametrize("case", cases.params([POOLING["op-pool-cls-int8"]]))
def test_cls_custom_op_int8(exported, case):
    """--pooling cls over the pipeline's mean (Normalize kept), the custom op, int8: the graph's first token,
    normalised; its difference with PyTorch reported as int8's."""
    data = result(exported, case.name)
    meta = data["info"]
    assert meta["pooling"] == {"mode": "cls", "normalize": True}
    assert meta["custom_ops"] and meta["precision"] == "int8" and meta["quantize"]["quantized_matmuls"] > 0
    hidden, pooled, _ = run_graph(data)
    expected = hidden[:, 0] / np.linalg.norm(hidden[:, 0], axis=1, keepdims=True)
    assert np.abs(pooled - expected).max() <= 1e-5
    validation = meta["validation"]
    rows = [row for row in validation["rows"] if row["output"] == "sentence_embedding"]
    assert not validation["enforced"] and len(rows) == 3
    assert all(0 < row["max_abs_diff"] < 0.2 and row["pooled_cosine"] > 0.95 for row in rows), rows
    # the short graph is int8 too: within int8's own distance of model.onnx's int8
    check_short_graph(data, 0.2, 0.99)


@pytest.mark.parametrize("case", cases.params([POOLING["pool-cls-roberta"], POOLING["op-pool-max"]]))
def test_other_poolings(exported, case):
    """Exhaustive tier: cls without a pipeline (no Normalize) on roberta; max with the custom op."""
    cases.check_dense_parity(exported, case)
    data = result(exported, case.name)
    assert data["info"]["pooling"] == {"mode": case.export.get("pooling") or case.sentence["pooling"],
                                       "normalize": False}


@in_group("pool-max-O2")
@pytest.mark.parametrize("case", cases.params([POOLING["pool-max-O2"]]))
def test_float16_keeps_the_pooled_output(exported, case, tmp_path):
    """--fp16 is for CUDA (none here): the O2 graph's float16 conversion keeps sentence_embedding float32, and
    ONNX Runtime's CPU provider gives it within 1e-2 of the float32 graph, still of unit norm."""
    import shutil

    from lsg_export.onnx.optimize import to_float16
    data = result(exported, case.name)
    copy = tmp_path / "fp16"
    shutil.copytree(data["onnx"], copy)
    to_float16(copy / "model.onnx", False)
    graph = onnx.load(str(copy / "model.onnx")).graph
    assert [(v.name, v.type.tensor_type.elem_type) for v in graph.output] == \
        [("last_hidden_state", onnx.TensorProto.FLOAT), ("sentence_embedding", onnx.TensorProto.FLOAT)]
    _, expected, _ = run_graph(data)
    _, got, _ = run_graph({**data, "onnx": str(copy)})
    assert got.dtype == np.float32 and np.abs(got - expected).max() <= 1e-2
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-2)


def _has_cuda():
    import onnxruntime
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="--fp16 needs CUDA (onnxruntime-gpu and a GPU)")
def test_fp16_on_cuda(exported, tmp_path):
    """--optimize O2 --fp16 --device cuda with the pipeline's max + Normalize: sentence_embedding within 1e-2."""
    from lsg_export.onnx import export_onnx
    folder = result(exported, "pool-max-O2")["folder"]
    done = export_onnx(folder, tmp_path / "fp16", seq=cases.SEQ, optimize="O2", fp16=True, device="cuda",
                       lengths=[1, cases.BLOCK + 1, cases.SEQ])
    assert done.passed and done.info["precision"] == "fp16" and done.info["pooling"]["mode"] == "max"
    rows = [row for row in done.report.rows if row.output == "sentence_embedding"]
    assert len(rows) == 3 and all(row.ok and row.max_abs_diff <= 1e-2 for row in rows)
