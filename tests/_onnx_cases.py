"""Helpers of the ONNX tests: tiny checkpoints, the export cases, the dense ONNX-vs-PyTorch check.

Every case converts a tiny random checkpoint, exports it and compares ONNX Runtime with PyTorch at
every length 1..seq, returning plain data; `Exports` runs each case when a test first needs it."""
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from _tiny import TINY_BLOCK_SIZE, TINY_VOCAB, save_tiny_checkpoint

SEQ = 40  # export --seq of the tiny cases: 5 blocks of 8, every sparse window reaches real tokens
BLOCK = TINY_BLOCK_SIZE
VOCAB = TINY_VOCAB
BATCH_SIZES = (1, 2, 3)
SPARSITY_TYPES = ("norm", "pooling", "stride", "block_stride", "bos_pooling", "none")


def tiny_original(model_type, folder):
    """A random original checkpoint of the tiny factory with 32 positions (converted to 64) and a
    feed-forward of 48."""
    return save_tiny_checkpoint(model_type, folder, max_positions=32, intermediate_size=48)


@dataclass
class Case:
    name: str
    model_type: str
    head: str
    lsg: dict = field(default_factory=dict)  # convert options
    export: dict = field(default_factory=dict)  # export_onnx options
    dense: bool = True  # compare at every length 1..SEQ and batch sizes BATCH_SIZES
    atol: float = 1e-4
    exhaustive: bool = False  # only in the exhaustive tier (pytest -m exhaustive): see EXHAUSTIVE_ONLY
    sentence: dict = None  # a sentence-transformers pipeline written into the original: {"pooling", "normalize"}


# The default suite exports a covering set of the matrix: every family, task, sparsity type, G in {1, 7},
# mask_first_token on and off, sparsity factor 2 and 4, lsh and every --optimize level at least once
# (test_default_tier_covers_the_matrix). An export costs ~25 s of torch.export on this hardware, so the
# other family x head pairs run in the exhaustive tier, which CI runs after the default suite.
DEFAULT_TIER = {"bert-Model", "bert-ForPreTraining", "bert-ForQuestionAnswering", "roberta-Model",
                "roberta-ForSequenceClassification", "camembert-Model", "camembert-ForMaskedLM",
                "xlm-roberta-ForTokenClassification", "distilbert-ForTokenClassification", "albert-Model",
                "albert-ForMultipleChoice", "int8", "op-bert-Model", "op-roberta-ForMaskedLM",
                "op-albert-ForTokenClassification", "op-int8", "pool-max-O2", "op-pool-cls-int8"}


def in_tiers(cases):
    """Mark every case outside DEFAULT_TIER as exhaustive-only."""
    for case in cases:
        case.exhaustive = case.name not in DEFAULT_TIER
    return cases


def matrix_cases():
    """Every family x head (= task) once, the LSG options spread so that every deterministic sparsity
    type meets G in {1, 7} and mask_first_token on and off, sparsity factors 2 and 4, one lsh case,
    and a few cases go through --optimize O1 / O2."""
    from lsg_export.families import FAMILIES
    cases = []
    optimize = {5: "O2", 13: "O1", 22: "O2", 31: "O2"}
    for family in ("bert", "roberta", "camembert", "xlm-roberta", "distilbert", "albert"):
        for head in FAMILIES[family].heads:
            i = len(cases)
            lsg = dict(sparsity_type=SPARSITY_TYPES[i % 6], num_global_tokens=(1, 7)[(i // 6) % 2],
                       mask_first_token=bool((i // 12) % 2), sparsity_factor=4 if i % 5 == 4 else 2)
            if i == 37:  # lsh too (its projections are created lazily: exported after one eager forward)
                lsg.update(sparsity_type="lsh", num_global_tokens=2)
            export = {"optimize": optimize[i]} if i in optimize else {}
            cases.append(Case(f"{family}-{head}", family, head, lsg, export))
    return in_tiers(cases)


def extra_cases():
    return in_tiers([Case("int8", "roberta", "ForSequenceClassification", dict(sparsity_type="pooling"),
                          dict(quantize="int8"), dense=False)])


def custom_op_cases():
    """--attention custom-op: the families and tasks spread over every deterministic sparsity type, G in
    {1, 7}, mask_first_token on and off, sf 2 and 4, with --optimize O2 and int8 once."""
    op = {"attention": "custom-op"}
    return in_tiers([Case("op-bert-Model", "bert", "Model", dict(sparsity_type="norm"), op),
            Case("op-roberta-ForMaskedLM", "roberta", "ForMaskedLM",
                 dict(sparsity_type="pooling", num_global_tokens=7, mask_first_token=True), op),
            Case("op-distilbert-ForSequenceClassification", "distilbert", "ForSequenceClassification",
                 dict(sparsity_type="bos_pooling", sparsity_factor=4), op),
            Case("op-albert-ForTokenClassification", "albert", "ForTokenClassification",
                 dict(sparsity_type="stride", num_global_tokens=7), {**op, "optimize": "O2"}),
            Case("op-xlm-roberta-ForQuestionAnswering", "xlm-roberta", "ForQuestionAnswering",
                 dict(sparsity_type="block_stride", mask_first_token=True), op),
            Case("op-camembert-ForMultipleChoice", "camembert", "ForMultipleChoice",
                 dict(sparsity_type="none", num_global_tokens=7), op),
            Case("op-int8", "bert", "ForSequenceClassification", dict(sparsity_type="pooling"),
                 {**op, "quantize": "int8"}, dense=False)])


def pooling_cases():
    """The sentence_embedding output (mean pooling: MiniLM's, gather and custom-op): max + Normalize from the
    checkpoint's pipeline with --optimize O2; --pooling cls over a pipeline's mean, custom-op and int8; then
    (exhaustive) cls of a checkpoint without a pipeline, max with the custom op."""
    return in_tiers([
        Case("pool-max-O2", "bert", "Model", dict(sparsity_type="norm"), dict(optimize="O2"),
             sentence=dict(pooling="max", normalize=True)),
        Case("op-pool-cls-int8", "bert", "Model", dict(sparsity_type="pooling", num_global_tokens=7),
             dict(attention="custom-op", quantize="int8", pooling="cls"), dense=False,
             sentence=dict(pooling="mean", normalize=True)),
        Case("pool-cls-roberta", "roberta", "Model", dict(sparsity_type="stride"), dict(pooling="cls")),
        Case("op-pool-max", "bert", "Model", dict(sparsity_type="bos_pooling"), dict(attention="custom-op"),
             sentence=dict(pooling="max", normalize=False))])


def write_sentence_pipeline(folder, pooling, normalize, hidden=32):
    """The files of a sentence-transformers checkpoint beside its weights: modules.json, 1_Pooling/config.json
    (the older flag keys, as all-MiniLM-L6-v2 has them), sentence_bert_config.json."""
    import json
    folder = Path(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    flags = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max"}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": hidden, **{key: mode == pooling for key, mode in flags.items()}}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    return folder


def convert_case(case, root):
    from lsg_export import convert
    from lsg_export.families import FAMILIES
    root = Path(root)
    if case.sentence:  # its own original: the pipeline files must not reach the other cases' conversions
        original = write_sentence_pipeline(tiny_original(case.model_type, root / f"original-{case.name}"),
                                           **case.sentence)
    else:
        original = tiny_original(case.model_type, root / f"original-{case.model_type}")
    folder = root / case.name
    convert(str(original), folder, max_sequence_length=64, architecture=FAMILIES[case.model_type].architecture(
        case.head), block_size=BLOCK, sparse_block_size=BLOCK, force=True, **case.lsg)
    return folder


def row_lengths(batch, length):
    """Real tokens per row: full, two thirds, a third / one less, so that padding crosses blocks."""
    return [length, max(1, 2 * length // 3), max(1, length // 3)][:batch] if batch > 1 else [length]


def dense_compare(onnx_folder, model_folder, task, lengths, batch_sizes, seed=0):
    """max abs diff between ONNX Runtime and PyTorch over lengths x batch sizes (real tokens of per-token
    outputs), and the first (length, batch, output, diff) above 1e-4 (None if none)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from lsg_export.onnx.pipeline import load_torch_model, read_export_folder
    from lsg_export.onnx.tasks import TaskModule, make_inputs, read_model_folder
    meta = read_export_folder(onnx_folder)
    info = read_model_folder(model_folder)
    module = TaskModule(load_torch_model(info), task, meta.get("pooling")).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if meta.get("custom_ops"):
        from lsg_export.ops import session_options_with_ops
        options = session_options_with_ops(options)
    session = ort.InferenceSession(str(Path(onnx_folder) / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    feeds = [i.name for i in session.get_inputs()]
    generator = torch.Generator().manual_seed(seed)
    worst, first_bad, runs = 0.0, None, 0
    for length in lengths:
        for batch in batch_sizes:
            inputs = make_inputs(info, task, batch, length, lengths=row_lengths(batch, length), generator=generator)
            with torch.no_grad():
                expected = [t.numpy() for t in module(*inputs.values())]
            got = session.run(meta["outputs"], {name: inputs[name].numpy() for name in feeds})
            mask = inputs["attention_mask"].bool().numpy()
            for name, ref, out in zip(meta["outputs"], expected, got):
                assert ref.shape == out.shape, (name, length, batch, ref.shape, out.shape)
                if ref.shape[:mask.ndim] == mask.shape and name != "sentence_embedding":  # per-token outputs
                    ref, out = ref[mask], out[mask]
                diff = float(np.abs(ref.astype(np.float64) - out).max())
                if not np.isfinite(diff):
                    diff = float("inf")
                worst = max(worst, diff)
                if diff > 1e-4 and first_bad is None:
                    first_bad = (length, batch, name, diff)
            runs += 1
    return {"max_diff": worst, "first_bad": first_bad, "runs": runs}


def run_case(case, root):
    """Worker: convert + export (+ dense comparison). Returns a dict; errors are returned, not raised."""
    import torch
    torch.set_num_threads(1)
    from lsg_export.onnx import export_onnx
    started = time.perf_counter()
    try:
        folder = convert_case(case, root)
        out = folder / "onnx"
        result = export_onnx(folder, out, seq=SEQ, force=True, lengths=[1, BLOCK + 1, SEQ], **case.export)
        data = {"case": case.name, "folder": str(folder), "onnx": str(out), "task": result.task,
                "info": result.info, "passed": result.passed, "export_seconds": result.info["seconds"]["export"]}
        if case.dense:
            data["dense"] = dense_compare(out, folder, result.task, range(1, SEQ + 1), BATCH_SIZES)
    except Exception:  # reported by the test that reads it
        data = {"case": case.name, "error": traceback.format_exc()}
    data["seconds"] = time.perf_counter() - started
    return data


MINILM_LENGTHS = [1, 37, 129, 300, 1000, 4096]
MINILM_OP_LENGTHS = [129, 4096]


def run_minilm(root):
    """Worker: the bundled MiniLM converted (defaults) and exported at --seq 4096, validated at MINILM_LENGTHS,
    then exported with --attention custom-op and no short graph, validated at MINILM_OP_LENGTHS."""
    import torch
    torch.set_num_threads(1)
    from lsg_export import convert
    from lsg_export.onnx import export_onnx
    started = time.perf_counter()
    try:
        folder = Path(root) / "lsg-minilm"
        convert(None, folder, max_sequence_length=4096, force=True)
        export_started = time.perf_counter()
        result = export_onnx(folder, folder / "onnx", seq=4096, lengths=MINILM_LENGTHS, batch_size=2, force=True)
        data = {"case": "minilm", "folder": str(folder), "onnx": str(folder / "onnx"), "task": result.task,
                "info": result.info, "passed": result.passed, "report": result.report.to_dict(),
                "export_seconds": time.perf_counter() - export_started}
        # the same model with --attention custom-op, validated at the longest length
        result = export_onnx(folder, folder / "onnx-op", seq=4096, lengths=MINILM_OP_LENGTHS, batch_size=2,
                             attention="custom-op", short_graph=False, force=True)
        data["custom_op"] = {"onnx": str(folder / "onnx-op"), "info": result.info, "passed": result.passed,
                             "report": result.report.to_dict()}
    except Exception:
        data = {"case": "minilm", "error": traceback.format_exc()}
    data["seconds"] = time.perf_counter() - started
    return data


class Exports:
    """exports[name] -> the result dict of one case (or "minilm"), built the first time a test asks for
    it, in this process, then kept for the session: a `-k` run builds only what its tests use."""

    def __init__(self, root):
        self.root = Path(root)
        self.cases = {case.name: case for case in matrix_cases() + extra_cases() + custom_op_cases()
                      + pooling_cases()}
        self.results = {}

    def __getitem__(self, name):
        if name not in self.results:
            if name == "minilm":
                self.results[name] = run_minilm(self.root)
            else:
                self.results[name] = run_case(self.cases[name], self.root)
        return self.results[name]


def params(cases):
    """pytest params of cases: id the case's name; grouped by case for pytest-xdist's --dist loadgroup
    (a case's tests run in one worker, which exports it once); exhaustive-tier cases marked so."""
    import pytest
    return [pytest.param(case, id=case.name, marks=[pytest.mark.xdist_group(case.name)]
                         + ([pytest.mark.exhaustive] if case.exhaustive else [])) for case in cases]


def case_result(exported, name):
    """One case's result dict; the test fails with the export's traceback if it raised."""
    import pytest
    data = exported[name]
    if "error" in data:
        pytest.fail(f"{name}: the export raised\n{data['error']}")
    return data


def check_dense_parity(exported, case):
    """A dense case: the export's task, its validation passed, and ONNX Runtime within 1e-4 of PyTorch at
    every length 1..SEQ and batch size of BATCH_SIZES."""
    from lsg_export.onnx.tasks import HEAD_TASKS
    data = case_result(exported, case.name)
    assert data["task"] == HEAD_TASKS[case.head]
    assert data["passed"], data["info"]["validation"]
    dense = data["dense"]
    assert dense["runs"] == SEQ * len(BATCH_SIZES)
    assert dense["first_bad"] is None, f"{case.name} ({case.lsg}): {dense['first_bad']}"
    assert dense["max_diff"] <= 1e-4
