"""`lsg-export bench`: a --quick run of every CPU backend on a tiny LSG bert (table, JSON schema, CSV,
plot, cached exports, the quality columns), two rounds pooled, the quality columns on a document, an
export as target with a length above its --seq and a broken copy that fails without stopping the
other backends, the default target, bad arguments; the pieces (growth exponent, chunking, ratios,
pooling, timing loop, peak memory) on real values."""
import csv
import datetime
import importlib.util
import json
import mmap
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from _cli import assert_user_error, invoke

from lsg_export.bench import run as run_module
from lsg_export.bench.backends import BACKENDS, Runner, chunked, export_kind, unchunked
from lsg_export.bench.exports import CACHE_DIR, GRAPHS_DIR
from lsg_export.bench.measure import (Cell, PeakMemory, planned_runs, pool, predicted_seconds,
                                     time_interleaved, time_runs)
from lsg_export.bench.report import exponent, render_table
from lsg_export.bench.run import SCHEMA, add_ratios, run_bench
from lsg_export.cli_state import last_output, remember_output
from lsg_export.errors import LSGExportError

# OpenVINO (an optional package) has tests of its own below
CPU_BACKENDS = [name for name, b in BACKENDS.items() if "cpu" in b.devices and b.engine != "openvino"]
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
LENGTHS = [64, 128]
CELL_KEYS = {"backend", "length", "batch", "status", "reason", "warmup", "runs", "p50_ms", "p90_ms", "p99_ms",
             "mean_ms", "min_ms", "tokens_per_s", "peak_memory_mb", "memory_kind", "speedup_vs_torch_lsg",
             "speedup_vs_torch_chunked", "pooled_cosine", "min_token_cosine", "times_ms"}
FLOAT32_ORT = ("ort-gather", "ort-gather-optimized", "ort-custom-op")
INT8 = ("ort-int8", "ort-int8-custom-op", "ort-int8-per-tensor", "ort-int8-per-tensor-custom-op")
KEEP_ALL = ("ort-int8-keep12-custom-op",)  # the tiny model has 12 weights: all kept float32


@pytest.fixture(scope="module")
def tiny_lsg(tiny_bert, tmp_path_factory):
    """A tiny LSG BertModel (128 positions, blocks of 8): feature-extraction."""
    from lsg_export import convert
    folder = tmp_path_factory.mktemp("bench") / "lsg-tiny"
    convert(str(tiny_bert), folder, max_sequence_length=128, block_size=8, sparse_block_size=8,
            architecture="BertModel")
    return folder


@pytest.fixture(scope="module")
def quick_run(tiny_lsg, tmp_path_factory):
    """One --quick run of every CPU backend at 64 and 128 tokens, 1 thread: (result, JSON, out folder)."""
    out = tmp_path_factory.mktemp("bench-out")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(out)
        result = invoke("bench", tiny_lsg, "--quick", "--seq", "64,128", "--threads", "1",
                        "--backends", ",".join(CPU_BACKENDS), "--json", out / "bench.json", "--csv", out / "bench.csv",
                        "--plot", out / "bench.png")
        assert result.exit_code == 0, (result.output, result.exception)
        # the cache exports are not recorded as the last export made from the user's directory
        with pytest.raises(LSGExportError, match="has written nothing from this directory"):
            last_output("onnx")
    return result, json.loads((out / "bench.json").read_text()), out


@pytest.mark.quick
def test_pytorch_backends_at_one_length(tiny_lsg, tmp_path):
    """The command end to end without an export (the quick tier's bench): two PyTorch backends, the
    table on stdout, the JSON with timings and the quality columns."""
    result = invoke("bench", tiny_lsg, "--seq", "64", "--threads", "1", "--warmup", "0", "--repeat", "2",
                    "--backends", "torch-lsg,torch-chunked", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "torch-lsg" in result.stdout and "torch-chunked" in result.stdout
    data = json.loads((tmp_path / "b.json").read_text())
    rows = {r["backend"]: r for r in data["results"]}
    assert set(rows) == {"torch-lsg", "torch-chunked"}
    for row in rows.values():
        assert row["status"] == "ok" and row["length"] == 64 and row["runs"] == 2 and row["p50_ms"] > 0
    assert rows["torch-lsg"]["pooled_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert rows["torch-chunked"]["speedup_vs_torch_lsg"] == pytest.approx(
        rows["torch-lsg"]["p50_ms"] / rows["torch-chunked"]["p50_ms"], rel=1e-3)


def test_quick_run_measures_every_cpu_backend(quick_run, tiny_lsg):
    result, data, _ = quick_run
    for name in CPU_BACKENDS:
        assert name in result.stdout
    # the first run builds the exports: each step is a line on stderr without a terminal
    for name in (*FLOAT32_ORT, *INT8, *KEEP_ALL):
        assert f"exporting {name} (first run: cached in " in result.stderr, result.stderr
    assert "exporting ort-int8: validating at length 19 (2 of 2)" in result.stderr  # block 8: lengths 5, 19
    # one torch.export per attention kind: the other exports start from copies of its graphs
    stderr = " ".join(result.stderr.split())
    assert stderr.count(": exporting model.onnx (opset") == 2, stderr
    assert stderr.count("graphs exported earlier") == len(FLOAT32_ORT) + len(INT8) + len(KEEP_ALL) - 2, stderr
    assert data["schema"] == SCHEMA
    assert set(data) == {"schema", "target", "settings", "environment", "backends", "results", "summary"}
    assert data["target"]["model"] == str(tiny_lsg.resolve()) and data["target"]["task"] == "feature-extraction"
    assert data["settings"]["lengths"] == LENGTHS and data["settings"]["batch_sizes"] == [1]
    assert data["settings"]["threads"] == 1 and (data["settings"]["warmup"], data["settings"]["repeat"]) == (1, 2)
    assert [(r["backend"], r["length"]) for r in data["results"]] == [(b, n) for b in CPU_BACKENDS for n in LENGTHS]
    lsg = {r["length"]: r["p50_ms"] for r in data["results"] if r["backend"] == "torch-lsg"}
    for row in data["results"]:
        assert set(row) == CELL_KEYS
        assert row["status"] == "ok", row
        assert row["runs"] == 2 == len(row["times_ms"]) and row["warmup"] == 1
        assert row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= max(row["times_ms"])
        assert row["p50_ms"] == pytest.approx(float(np.median(row["times_ms"])), rel=1e-3)
        assert row["tokens_per_s"] == pytest.approx(row["length"] / row["p50_ms"] * 1000, rel=1e-3)
        assert row["memory_kind"] == "RSS increase" and row["peak_memory_mb"] >= 0
        assert row["speedup_vs_torch_lsg"] == pytest.approx(lsg[row["length"]] / row["p50_ms"], rel=2e-3)
    for name, record in data["backends"].items():
        assert record["status"] == "ok" and record["error"] is None and record["load_seconds"] > 0, (name, record)
    assert data["backends"]["torch-dense"]["note"].startswith("BertModel, attention sdpa")
    assert "window 24" in data["backends"]["torch-longformer"]["note"]  # 3 blocks of 8 tokens
    growth = data["summary"]["1"]["growth"]
    assert set(growth) == set(CPU_BACKENDS) and all(isinstance(g["time_exponent"], float) for g in growth.values())
    best = data["summary"]["1"]["per_length"]["128"]["best_ort_vs_torch_lsg"]
    assert best["backend"].startswith("ort-") and best["speedup"] == max(
        r["speedup_vs_torch_lsg"] for r in data["results"] if r["length"] == 128 and r["backend"].startswith("ort-"))
    env = data["environment"]
    assert env["cpu"] and env["threads"] == 1 and env["gpu"] is None and env["cpu_count"] >= 1
    assert {"torch", "onnxruntime", "transformers"} <= set(env["versions"])
    assert datetime.datetime.fromisoformat(env["date"]).year >= 2024


def test_quick_run_writes_csv_plot_and_cached_exports(quick_run, tiny_lsg):
    _, data, out = quick_run
    with open(out / "bench.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(data["results"])
    assert [(r["backend"], int(r["length"])) for r in rows] == [(r["backend"], r["length"]) for r in data["results"]]
    assert rows[0]["cpu"] == data["environment"]["cpu"] and rows[0]["torch"] == torch.__version__
    assert [float(t) for t in rows[0]["times_ms"].split()] == data["results"][0]["times_ms"]
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    for name in (*FLOAT32_ORT, *INT8):
        folder = tiny_lsg / "bench-exports" / name
        assert data["backends"][name]["export"] == str(folder)
        meta = json.loads((folder / "export.json").read_text())
        assert meta["task"] == "feature-extraction" and meta["seq"] == 128
    for name, attention, per_channel in (("ort-int8", "gather", True), ("ort-int8-custom-op", "custom-op", True),
                                         ("ort-int8-per-tensor", "gather", False),
                                         ("ort-int8-per-tensor-custom-op", "custom-op", False)):
        meta = json.loads((tiny_lsg / "bench-exports" / name / "export.json").read_text())
        assert meta["quantize"]["weight_type"] == "QInt8" and meta["attention"] == attention
        assert (meta["quantize"]["method"], meta["quantize"]["per_channel"]) == ("dynamic", per_channel)
        assert meta["quantize"]["quantized_matmuls"] > 0 and meta["optimize"]["level"] == "O2"
        assert meta["precision"] == "int8" and meta["validation"]["enforced"] is False
        assert export_kind(meta) == name  # such a folder, given as target, serves its own kind
        scales = int8_scale_sizes(tiny_lsg / "bench-exports" / name / "model.onnx")
        assert scales and set(scales) == ({32, 64} if per_channel else {1})  # hidden 32, intermediate 64


def int8_scale_sizes(path):
    """Sizes of the quantised MatMul weights' zero points (one per scale): a column count per channel, 1 per tensor."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    position = {"MatMulInteger": 3, "DynamicQuantizeMatMul": 3}  # B's zero point
    return [sizes[n.input[position[n.op_type]]] for n in model.graph.node if n.op_type in position]


def test_quick_run_reports_quality_against_float32_pytorch(quick_run):
    """The tiny model has no tokenizer: the quality columns compare each backend's output on random ids with
    float32 PyTorch's, and say so. float32 graphs agree to rounding (cosine 1 to the report's six decimals), int8
    and the other models do not (int8 loses 1e-4 to 1e-3 without VNNI, about 7e-5 with AMX int8)."""
    result, data, out = quick_run
    quality = data["settings"]["quality"]
    assert quality["text"] is None and quality["note"].startswith("random ids") and quality["batch"] == 1
    table = " ".join(result.stdout.split())  # the caption wraps
    assert "cosine" in table and "mean-pooled / lowest token" in table and "random ids" in table
    rows = {(r["backend"], r["length"]): r for r in data["results"]}
    for length in LENGTHS:
        for name in ("torch-lsg", *FLOAT32_ORT, *KEEP_ALL):
            row = rows[name, length]
            assert row["pooled_cosine"] >= 0.999999 and row["min_token_cosine"] >= 0.999999, row
        for name in (*INT8, "torch-dense", "torch-chunked", "torch-longformer"):
            row = rows[name, length]
            assert -1 <= row["min_token_cosine"] <= row["pooled_cosine"] < 0.99999, row
        assert rows["torch-longformer", length]["pooled_cosine"] < 0.9  # random weights: another model
    assert len({r["pooled_cosine"] for r in data["results"]}) > len(LENGTHS) * 4  # computed per backend and length
    with open(out / "bench.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [float(r["pooled_cosine"]) for r in csv_rows] == [r["pooled_cosine"] for r in data["results"]]
    assert [float(r["min_token_cosine"]) for r in csv_rows] == [r["min_token_cosine"] for r in data["results"]]


@pytest.fixture(scope="module")
def document(tiny_lsg, tmp_path_factory):
    """(a copy of the tiny model with a word-level tokenizer of its 100 ids, a text file in those words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    folder = tmp_path_factory.mktemp("bench-doc")
    model = folder / "lsg-tiny-tokenizer"
    # the bench's exports are made again (with the tokenizer), from the graphs it keeps
    shutil.copytree(tiny_lsg, model, ignore=lambda folder, names: [
        n for n in names if Path(folder).name == CACHE_DIR and n != GRAPHS_DIR])
    words = [f"w{i}" for i in range(5, 100)]
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, **{w: i + 5 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(model)
    text = folder / "report.txt"
    generator = np.random.default_rng(0)
    text.write_text(" ".join(words[i] for i in generator.integers(0, len(words), 100)))
    return model, text


def test_quality_on_a_document(document, tmp_path, monkeypatch):
    """--text FILE: the quality columns compare the outputs on the document's first tokens (100 here: the
    64-token length is its start, the 128-token one repeats it)."""
    model, text = document
    monkeypatch.chdir(tmp_path)
    result = invoke("bench", model, "--quick", "--seq", "64,128", "--threads", "1", "--backends",
                    "torch-lsg,ort-gather,ort-int8,torch-dense,ov-f32", "--text", text, "--json", "-")
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads(result.stdout)
    assert data["settings"]["quality"] == {"reference": "torch-lsg in float32 on CPU", "batch": 1, "text": str(text),
                                           "tokens": 100, "framed": {"prefix": [], "suffix": []}}  # no specials
    assert "report.txt's first tokens (100 in all)" in " ".join(result.stderr.split())  # the table: on stderr
    rows = {(r["backend"], r["length"]): r for r in data["results"]}
    for length in (64, 128):
        assert rows["torch-lsg", length]["pooled_cosine"] > 0.9999
        assert rows["ort-gather", length]["min_token_cosine"] > 0.9999
        assert rows["ort-int8", length]["pooled_cosine"] < 0.99999
        assert rows["torch-dense", length]["pooled_cosine"] < 0.9999
    # the columns against a direct computation: float32 PyTorch and each runtime on the document's first 64 tokens
    reference, outputs = direct_outputs(model, text, 64, data["backends"])
    for name, output in outputs.items():
        pooled, lowest = direct_cosines(reference, output)
        assert rows[name, 64]["pooled_cosine"] == pytest.approx(pooled, abs=2e-6), name
        assert rows[name, 64]["min_token_cosine"] == pytest.approx(lowest, abs=2e-6), name
    assert set(outputs) == {"ort-gather", "ort-int8", *(["ov-f32"] if HAS_OPENVINO else [])}
    if HAS_OPENVINO:  # it ran the gather graph the ort-gather backend made (no export of its own)
        assert data["backends"]["ov-f32"]["export"] == data["backends"]["ort-gather"]["export"]
    else:
        assert data["backends"]["ov-f32"]["status"] == "skipped" and rows["ov-f32", 64]["status"] == "skipped"
        assert "openvino is not installed" in rows["ov-f32", 64]["reason"]
    # without --text nor the default document: random ids, another reference, other figures
    monkeypatch.setattr(run_module, "DEFAULT_TEXT", tmp_path / "absent")
    random_ids = run_bench(str(model), seq="128", backends=["ort-int8"], threads=1, quick=True)
    assert random_ids.settings["quality"]["note"] == (f"random ids: no document ({tmp_path / 'absent'} is absent; "
                                                       "--text FILE names one)")
    assert random_ids.cells[0].pooled_cosine != rows["ort-int8", 128]["pooled_cosine"]


def direct_cosines(reference, output):
    """(mean-pooled cosine, lowest per-token cosine) of one row's (tokens, hidden) outputs, written out."""
    reference, output = reference.astype(np.float64), output.astype(np.float64)

    def cosine(a, b):
        return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(cosine(reference.mean(0), output.mean(0))), float(cosine(reference, output).min())


def direct_outputs(model, text, length, backends):
    """float32 PyTorch's output on the first `length` tokens of `text` and that of each ort-* / ov-f32 backend's
    export in `backends` (the JSON's records), computed here without the bench's runners: (tokens, hidden).
    The inputs are the bench's: the document's ids, no padding, the second half as a second segment."""
    import onnxruntime as ort
    from transformers import AutoModel, AutoTokenizer
    ids = AutoTokenizer.from_pretrained(model)(text.read_text(), add_special_tokens=False)["input_ids"][:length]
    types = np.zeros((1, length), dtype=np.int64)
    types[:, length // 2:] = json.loads((model / "config.json").read_text()).get("type_vocab_size", 2) > 1
    feeds = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, length), dtype=np.int64),
             "token_type_ids": types}
    with torch.inference_mode():
        lsg = AutoModel.from_pretrained(model, trust_remote_code=True).float().eval()
        reference = lsg(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state[0].numpy()
    outputs = {}
    for name, record in backends.items():
        if record["status"] != "ok" or record["export"] is None:
            continue
        graph = f"{record['export']}/model.onnx"
        if name.startswith("ort-"):
            session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
            outputs[name] = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0][0]
        else:
            import openvino as ov
            compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            arrays = {port.get_any_name(): feeds[port.get_any_name()] for port in compiled.inputs}
            outputs[name] = compiled(arrays)[compiled.outputs[0]][0]
    return reference, outputs


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (the openvino extra)")
def test_openvino_backends_run_the_gather_export(tiny_lsg, tmp_path, monkeypatch):
    """ov-f32 runs ort-gather's export (one export for both; quick_run's when it ran first) with the bench's
    threads and float32 precision, as close to PyTorch as ONNX Runtime; ov-bf16 runs only where OpenVINO reports
    native bf16, and is 'not applicable' elsewhere, saying why; ov-sdpa runs the SDPA graph made once from the
    export's model (cached in the export), at the CPU's default precision; ov-mixed runs it with bf16 written
    into the graph (CPUs with native bf16); ov-int8 runs it with int8 weights, measurably less close than
    float32."""
    from lsg_export.openvino.runtime import BF16_FLAGS, bf16_support, native_precision
    monkeypatch.chdir(tmp_path)
    gather = tiny_lsg / "bench-exports" / "ort-gather"
    result = invoke("bench", tiny_lsg, "--quick", "--seq", "64,128", "--threads", "1", "--backends",
                    "ort-gather,ov-f32,ov-bf16,ov-sdpa,ov-mixed,ov-int8,ov-int8-keep2", "--json", "-")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "exporting ov-" not in result.stderr and result.stderr.count("(first run: cached in") <= 1
    data = json.loads(result.stdout)
    rows = {(r["backend"], r["length"]): r for r in data["results"]}
    record = data["backends"]["ov-f32"]
    assert record["status"] == "ok" and record["export"] == str(gather)
    assert "OpenVINO 20" in record["note"] and "inference precision f32, threads 1" in record["note"]
    for length in LENGTHS:
        row = rows["ov-f32", length]
        assert row["status"] == "ok" and row["runs"] == 2 and row["p50_ms"] > 0
        assert row["pooled_cosine"] > 0.9999 and row["min_token_cosine"] > 0.9999, row
        assert row["pooled_cosine"] == pytest.approx(rows["ort-gather", length]["pooled_cosine"], abs=1e-5)
    # ov-sdpa: the SDPA graph (one OpenVINO attention node per layer), made once beside the export
    import openvino as ov
    sdpa_graph = gather / ".openvino-sdpa" / "model.onnx"
    ops = [op.get_type_name() for op in ov.Core().read_model(str(sdpa_graph)).get_ordered_ops()]
    assert ops.count("ScaledDotProductAttention") == 2  # one per layer of the tiny model
    assert data["backends"]["ov-sdpa"]["export"] == str(gather)
    assert f"inference precision {native_precision()}" in data["backends"]["ov-sdpa"]["note"]
    for length in LENGTHS:
        row = rows["ov-sdpa", length]
        assert row["status"] == "ok" and row["pooled_cosine"] > 0.999, row
        if native_precision() == "f32":
            assert row["min_token_cosine"] > 0.9999, row
    # ov-int8: the SDPA graph with int8 weights (per channel) and activations quantized per group at run time
    assert data["backends"]["ov-int8"]["export"] == str(gather)
    assert "int8 weights, activations quantized per group of 128" in data["backends"]["ov-int8"]["note"]
    for length in LENGTHS:
        row, f32 = rows["ov-int8", length], rows["ov-f32", length]
        assert row["status"] == "ok" and row["runs"] == 2, row
        assert 0.99 < row["pooled_cosine"] < 0.99999 and row["min_token_cosine"] < f32["min_token_cosine"], row
    assert ", 2 weights kept float: " in data["backends"]["ov-int8-keep2"]["note"]
    assert all(rows["ov-int8-keep2", length]["status"] == "ok" for length in LENGTHS)
    native, evidence = bf16_support()
    assert native == ("BF16" in evidence.split(";")[0])
    if native:
        assert data["backends"]["ov-bf16"]["status"] == "ok" and "inference precision bf16" in data["backends"][
            "ov-bf16"]["note"]
        assert "inference precision f32 with the graph's bf16 nodes in bf16 (mixed)" in data["backends"][
            "ov-mixed"]["note"]
        for length in LENGTHS:
            assert 0.99 < rows["ov-bf16", length]["pooled_cosine"] < 1.0
            assert 0.99 < rows["ov-mixed", length]["min_token_cosine"] < 1.0
    else:
        for name in ("ov-bf16", "ov-mixed"):
            for length in LENGTHS:
                row = rows[name, length]
                assert row["status"] == "not applicable" and row["runs"] == 0 and row["p50_ms"] is None
                assert row["reason"].startswith("this CPU has no native bf16 (OpenVINO's CPU capabilities FP32")
                assert all(flag in row["reason"] for flag in BF16_FLAGS)
            assert f"{name} not applicable: this CPU has no native bf16" in " ".join(result.stderr.split())


@pytest.mark.quick
def test_openvino_missing_skips_its_backends_with_the_install_line(monkeypatch):
    """Without the openvino package the ov-* backends are reported skipped, the reason in their record and
    cells, and nothing is run or exported for them."""
    from lsg_export.bench import exports, openvino_backend
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in ("openvino", "nncf") else real(name, *args))
    openvino_backend.openvino_unavailable.cache_clear()
    try:
        reason = "openvino is not installed (pip install 'lsg-export[openvino]')"
        for name in ("ov-f32", "ov-bf16"):
            assert openvino_backend.openvino_unavailable(name) == ("skipped", reason)
        assert openvino_backend.openvino_unavailable("ov-int8") == (
            "skipped", "openvino and nncf are not installed (pip install 'lsg-export[openvino]')")
        settings = {"lengths": [64, 128], "batch_sizes": [1]}
        record, cells = run_module.run_backend("ov-bf16", None, None, settings, lambda message: None, None)
        assert (record["status"], record["note"], record["export"]) == ("skipped", reason, None)
        assert [(c.length, c.status, c.reason, c.runs) for c in cells] == [(64, "skipped", reason, 0),
                                                                           (128, "skipped", reason, 0)]
        no_export = SimpleNamespace(export=None)  # a target that is a model folder
        assert exports.prepare_exports(["ov-f32", "ov-bf16", "ov-int8"], no_export) == {}  # nothing exported
    finally:
        openvino_backend.openvino_unavailable.cache_clear()


def test_quality_text_errors(document, tiny_lsg, tmp_path, monkeypatch):
    model, text = document
    monkeypatch.chdir(tmp_path)
    assert_user_error(invoke("bench", model, "--quick", "--text", tmp_path / "missing.txt"), "--text",
                      "missing.txt")
    assert_user_error(invoke("bench", tiny_lsg, "--quick", "--text", text), "needs a tokenizer")


def test_default_target_is_the_last_convert_and_exports_are_reused(quick_run, tiny_lsg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    remember_output("convert", tiny_lsg)
    model = tiny_lsg / "bench-exports" / "ort-gather" / "model.onnx"
    before = model.stat().st_mtime_ns
    result = invoke("bench", "--quick", "--seq", "64", "--backends", "ort-gather", "--json", "-")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "the last convert made from here" in result.stderr and str(tiny_lsg.resolve()) in result.stderr
    assert model.stat().st_mtime_ns == before  # up to date: reused, not exported again
    data = json.loads(result.stdout)  # stdout holds only the JSON (the table went to stderr)
    assert data["target"]["chosen"] == "last convert" and data["results"][0]["status"] == "ok"


def test_export_target_and_a_failing_backend(quick_run, tiny_lsg, tmp_path, monkeypatch):
    """An export folder as target (the last one made here) serves its own kind; a broken copy fails at
    every length while torch-lsg, in the same run, is measured."""
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "onnx"
    shutil.copytree(tiny_lsg / "bench-exports" / "ort-gather", good)
    broken = tmp_path / "onnx-broken"
    shutil.copytree(good, broken)
    (broken / "model.onnx").write_bytes((good / "model.onnx").read_bytes()[:1000])
    remember_output("onnx", good)

    result = invoke("bench", "--quick", "--seq", "32", "--backends", "ort-gather", "--json", "-")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "the last export made from here" in result.stderr
    data = json.loads(result.stdout)
    assert data["target"]["export"] == str(good) and data["target"]["export_kind"] == "ort-gather"
    assert data["backends"]["ort-gather"]["export"] == str(good) and data["results"][0]["status"] == "ok"

    result = invoke("bench", broken, "--quick", "--seq", "32,128", "--batch-size", "1,2", "--backends",
                    "ort-gather,torch-lsg", "--json", tmp_path / "broken.json")
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads((tmp_path / "broken.json").read_text())
    record = data["backends"]["ort-gather"]
    assert record["status"] == "failed" and "ONNX Runtime cannot load" in record["error"]
    assert "ort-gather failed" in result.stderr and "failed" in result.stdout
    assert [(r["backend"], r["length"], r["batch"], r["status"]) for r in data["results"]] == [
        ("ort-gather", n, b, "failed") for n in (32, 128) for b in (1, 2)] + [
        ("torch-lsg", n, b, "ok") for n in (32, 128) for b in (1, 2)]
    assert all(r["tokens_per_s"] == pytest.approx(r["batch"] * r["length"] / r["p50_ms"] * 1000, rel=1e-3)
               for r in data["results"][4:])
    assert data["results"][0]["reason"] == record["error"] and data["results"][0]["p50_ms"] is None


def test_rounds_alternate_the_order_and_pool_the_runs(quick_run, tiny_lsg):
    """--rounds 2 on torch-lsg and ort-gather (its export cached by quick_run): round 2 runs them in reverse
    order and each cell pools both rounds' timed runs."""
    messages, reported = [], []
    result = run_bench(str(tiny_lsg), seq="64", backends=["torch-lsg", "ort-gather"], threads=1, quick=True,
                       rounds=2, status=messages.append, progress=reported.append)
    assert [m for m in messages if "running" in m] == [
        "round 1/2: running torch-lsg", "round 1/2: running ort-gather",
        "round 2/2: running ort-gather", "round 2/2: running torch-lsg"]
    assert [c.backend for c in reported] == ["torch-lsg", "ort-gather", "ort-gather", "torch-lsg"]
    assert result.settings["rounds"] == 2 and result.to_dict()["settings"]["rounds"] == 2
    for name in ("torch-lsg", "ort-gather"):
        first, second = [c for c in reported if c.backend == name]
        cell = result.cell(name, 64, 1)
        assert cell.status == "ok" and (first.runs, second.runs) == (2, 2)
        assert cell.runs == first.runs + second.runs == len(cell.times_ms)
        assert cell.times_ms == first.times_ms + second.times_ms and cell.warmup == first.warmup + second.warmup
        assert cell.p50_ms == pytest.approx(float(np.median(cell.times_ms)), abs=1e-4)  # p50 rounded to 4 places
        assert cell.min_ms == min(cell.times_ms) and cell.peak_memory_mb == max(first.peak_memory_mb,
                                                                               second.peak_memory_mb)
        record = result.backends[name]
        assert record["rounds"] == 2 and record["status"] == "ok" and len(record["load_average_rounds"]) == 2
    lsg, ort = result.cell("torch-lsg", 64, 1), result.cell("ort-gather", 64, 1)
    assert ort.speedup_vs_torch_lsg == round(lsg.p50_ms / ort.p50_ms, 3)  # on the pooled p50s
    assert "2 rounds pooled" in render_table(result).title


def test_pooling_keeps_failures_and_pools_generation():
    def measured(times, decode_p50, memory):
        return Cell("ort-gather", 256, 2, warmup=1, runs=len(times), times_ms=times, peak_memory_mb=memory,
                    new_tokens=8, generate_times_ms=[10 * t for t in times], decode_p50_ms=decode_p50,
                    generate_peak_memory_mb=memory + 1)

    cells = [measured([1.0, 3.0], 20.0, 5.0), measured([2.0, 4.0, 6.0], 30.0, 7.0)]
    cell = pool(cells)
    assert (cell.runs, cell.warmup, cell.times_ms, cell.peak_memory_mb) == (5, 2, [1.0, 3.0, 2.0, 4.0, 6.0], 7.0)
    assert (cell.p50_ms, cell.mean_ms, cell.min_ms) == (3.0, 3.2, 1.0)
    assert cell.tokens_per_s == round(2 * 256 / 0.003, 1)
    assert (cell.generate_runs, cell.generate_p50_ms, cell.generate_peak_memory_mb) == (5, 30.0, 8.0)
    assert cell.decode_p50_ms == 25.0 and cell.decode_tokens_per_s == round(16 / 0.025, 2)  # median of the rounds
    assert cells[0].runs == 2  # the rounds' cells are left as they were
    oom = Cell("ort-gather", 256, 2, status="out of memory", reason="bad_alloc")
    skipped = Cell("ort-gather", 256, 2, status="skipped", reason="one run would take ~200 s")
    assert pool([cells[0], skipped, oom]) is oom and pool([skipped, cells[1]]) is skipped
    assert pool([cells[0]]) is cells[0]


def test_lengths_a_backend_cannot_run_are_skipped():
    runner = Runner(lambda batch, length: None, max_length=64)
    assert runner.limit(1, 64) is None and runner.limit(1, 65) == "above its maximum length 64"


@pytest.mark.quick
def test_bad_arguments_give_one_line(tiny_lsg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_user_error(invoke("bench", tiny_lsg, "--backends", "torch-lsg,onnx-magic"), "unknown backend onnx-magic",
                      "available: torch-lsg")
    assert_user_error(invoke("bench", tiny_lsg, "--seq", "64,4096"), "--seq 4096 is above", "maximum length 128")
    assert_user_error(invoke("bench", tiny_lsg, "--seq", "64,abc"), "--seq must be comma-separated integers")
    assert_user_error(invoke("bench", tiny_lsg, "--batch-size", "0"), "--batch-size must be positive")
    assert_user_error(invoke("bench", tiny_lsg, "--backends", "ort-fp16"), "ort-fp16 does not run on cpu")
    assert_user_error(invoke("bench", tiny_lsg, "--new-tokens", "8"), "--new-tokens is for encoder-decoders")
    assert_user_error(invoke("bench", tiny_lsg, "--rounds", "0"), "--rounds must be a positive integer, got 0")
    assert_user_error(invoke("bench", tiny_lsg, "--rounds", "two"), "--rounds must be a positive integer")
    with pytest.raises(LSGExportError, match="--rounds must be a positive integer, got 1.5"):
        run_bench(str(tiny_lsg), rounds=1.5)
    assert_user_error(invoke("bench", tmp_path), "not a converted LSG model folder")
    assert_user_error(invoke("bench", "--quick"), "neither `lsg-export onnx` nor `lsg-export convert`")
    if not torch.cuda.is_available():
        assert_user_error(invoke("bench", tiny_lsg, "--device", "cuda"), "--device cuda: no CUDA GPU")
    assert not [p for p in tmp_path.iterdir() if p.name != "lsg-home"]  # nothing written


# --- the pieces ---------------------------------------------------------------------------------

def test_growth_exponent():
    lengths = [512, 1024, 4096, 16384]
    assert exponent([(n, 3.0 * n) for n in lengths]) == pytest.approx(1.0)
    assert exponent([(n, 1e-4 * n * n) for n in lengths]) == pytest.approx(2.0)
    assert exponent([(512, 5.0)]) is None


def test_chunks_are_independent_and_padded():
    ids = torch.arange(1, 2 * 10 + 1).reshape(2, 10)
    out = chunked({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 4, pad_id=0)
    assert out["input_ids"].shape == (6, 4)
    assert out["input_ids"][:3].flatten()[:10].tolist() == list(range(1, 11))
    assert out["input_ids"][2].tolist() == [9, 10, 0, 0] and out["attention_mask"][2].tolist() == [1, 1, 0, 0]
    assert out["input_ids"][3].tolist() == [11, 12, 13, 14]
    short = chunked({"input_ids": ids[:, :3]}, 4, pad_id=0)["input_ids"]
    assert short.tolist() == [[1, 2, 3], [11, 12, 13]]  # shorter than a chunk: not padded to it
    hidden = out["input_ids"].unsqueeze(-1).float().numpy()  # per-token outputs of the chunks, back in place
    assert unchunked(hidden, 2, 10)[..., 0].tolist() == ids.tolist()
    with pytest.raises(LSGExportError, match="one per chunk"):
        unchunked(np.zeros((6, 3)), 2, 10)


def test_ratios_against_torch_lsg_and_chunked():
    cells = [Cell("torch-lsg", 4096, 1, p50_ms=300.0), Cell("torch-chunked", 4096, 1, p50_ms=100.0),
             Cell("ort-gather", 4096, 1, p50_ms=120.0), Cell("ort-int8", 4096, 1, status="failed"),
             Cell("ort-gather", 1024, 1, p50_ms=30.0)]
    add_ratios(cells)
    assert (cells[2].speedup_vs_torch_lsg, cells[2].speedup_vs_torch_chunked) == (2.5, 0.833)
    assert cells[1].speedup_vs_torch_lsg == 3.0 and cells[0].speedup_vs_torch_lsg == 1.0
    assert cells[3].speedup_vs_torch_lsg is None and cells[4].speedup_vs_torch_lsg is None  # no torch-lsg at 1024


def test_timing_loop_caps_long_runs():
    calls = []
    times, warm = time_runs(lambda: calls.append(time.sleep(0.01)), lambda: None, warmup=3, repeat=20,
                            cell_seconds=10.0)
    assert (warm, len(times), len(calls)) == (3, 20, 23) and min(times) >= 0.01
    calls.clear()
    times, warm = time_runs(lambda: calls.append(time.sleep(0.05)), lambda: None, warmup=3, repeat=20,
                            cell_seconds=0.1)
    assert (warm, len(times)) == (1, 3)  # one warm-up, MIN_RUNS timed runs
    assert predicted_seconds([(1024, 1.0), (2048, 2.0)], 8192) == pytest.approx(8.0)  # linear so far
    assert predicted_seconds([(1024, 1.0)], 4096) == pytest.approx(16.0)  # one point: assume quadratic


def test_interleaved_timing_runs_cells_in_turns_and_keeps_a_failure_to_its_cell():
    order = []

    def call(name, seconds=0.0):
        def run():
            order.append(name)
            time.sleep(seconds)
            if name == "bad" and order.count("bad") == 2:
                raise MemoryError("out of memory")
        return run

    timed = time_interleaved([(call("a", 0.01), 3), (call("b"), 1), (call("bad"), 4), (call("c", 0.02), 2)],
                             lambda: None)
    assert order == ["a", "b", "bad", "c", "a", "bad", "c", "a"]  # turns; "b" done after one, "bad" stops
    (a, a_error), (b, b_error), (bad, bad_error), (c, c_error) = timed
    assert (len(a), len(b), len(bad), len(c)) == (3, 1, 1, 2)
    assert min(a) >= 0.01 and min(c) >= 0.02 and a_error is b_error is c_error is None
    assert isinstance(bad_error, MemoryError)
    assert (planned_runs(0.05, 20, 0.1), planned_runs(0.001, 20, 10.0), planned_runs(1.0, 5, 3.0)) == (3, 20, 3)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_peak_memory_sees_an_allocation_and_resets():
    memory = PeakMemory("cpu", "torch")
    memory.reset()  # the peak from here: this worker process may have been larger before (earlier tests)
    block = mmap.mmap(-1, 64 * 2**20)  # 64 MB mapped for itself (malloc may keep what is freed), touched
    for page in range(0, len(block), mmap.PAGESIZE):
        block[page] = 1
    assert 60 <= memory.peak_mb() <= 200
    block.close()
    memory.reset()
    assert memory.peak_mb() < 20
