"""OpenVINO with static int8 (NNCF post-training quantization) on the gather graph, against plain ov-bf16.

NNCF inserts int8 FakeQuantize ops with scales calibrated on text that is not the evaluation document (other
license texts of /usr/share/common-licenses, in windows of LENGTH tokens); OpenVINO's CPU plugin then runs the
quantized MatMuls with int8 arithmetic (VNNI / AMX-int8) and the rest at the inference precision asked. Quality is
the bench's: mean-pooled and lowest per-token cosine of last_hidden_state to ONNX Runtime's float32 output on the
first LENGTH tokens of GPL-3, fed as word pieces (the bench's input) and as the tokenizer encodes it ([CLS] ...
[SEP]). Times: median of --repeat runs, the configurations alternated round by round.

    python benchmarks/openvino_static_int8.py GATHER_EXPORT --configs plain:bf16,performance:bf16,mixed:bf16

A configuration is PRESET:PRECISION[:IGNORE][:ALPHA]: PRESET plain (no quantization), performance or mixed
(NNCF presets: symmetric / asymmetric activations), PRECISION bf16 or f32 for what stays unquantized, IGNORE
the number of MatMul weights (ranked by int8_sensitivity.py's --json, worst first) left unquantized, ALPHA
SmoothQuant's alpha for MatMuls (NNCF's transformer default when absent; -1 turns it off).
"""
import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

CALIBRATION_TEXTS = ("Apache-2.0", "GPL-2", "LGPL-2.1", "MPL-2.0", "GFDL-1.3", "MPL-1.1")


def tokenizer_for(export):
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(Path(export) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def rows(ids, length):
    row = np.asarray(ids[:length], dtype=np.int64)[None, :]
    return {"input_ids": row, "attention_mask": np.ones_like(row), "token_type_ids": np.zeros_like(row)}


def calibration_rows(tokenizer, length, count):
    """`count` windows of `length` word pieces from the other license texts, each [CLS] ... [SEP]."""
    pieces = []
    for name in CALIBRATION_TEXTS:
        pieces += tokenizer.encode(Path("/usr/share/common-licenses", name).read_text(), add_special_tokens=False).ids
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    step = max(1, (len(pieces) - length) // max(1, count - 1))
    return [rows([cls] + pieces[i * step:i * step + length - 2] + [sep], length) for i in range(count)]


def main():
    import nncf
    import onnxruntime as ort
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    from lsg_export.onnx.validate import cosines
    from lsg_export.openvino.weights import matmuls_by_weight

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--configs", default="plain:bf16,performance:bf16,mixed:bf16")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--calibration-rows", type=int, default=4)
    parser.add_argument("--ranking", type=Path, help="int8_sensitivity.py's --json (for IGNORE)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--save", type=Path, help="a folder for the quantized OpenVINO models (<config>.xml)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    nncf.set_log_level(40)
    tokenizer = tokenizer_for(args.export)
    text = Path("/usr/share/common-licenses/GPL-3").read_text()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    pieces = tokenizer.encode(text, add_special_tokens=False).ids
    inputs = {"word pieces": rows(pieces, args.length),
              "[CLS] ... [SEP]": rows([cls] + pieces[:args.length - 2] + [sep], args.length)}
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    reference_session = ort.InferenceSession(str(args.export / "model.onnx"), options,
                                             providers=["CPUExecutionProvider"])
    names = [i.name for i in reference_session.get_inputs()]
    references = {k: reference_session.run(["last_hidden_state"], {n: v[n] for n in names})[0]
                  for k, v in inputs.items()}
    del reference_session
    ranking = [r["weight"] for r in sorted(json.loads(args.ranking.read_text())["alone"],
                                           key=lambda r: r["min_token_cosine"])] if args.ranking else []
    core = ov.Core()
    calibration = nncf.Dataset(calibration_rows(tokenizer, args.length, args.calibration_rows),
                               lambda row: {n: row[n] for n in names})
    compiled = {}
    for config in args.configs.split(","):
        preset, precision, *rest = config.split(":")
        ignore = int(rest[0]) if rest else 0
        model = core.read_model(str(args.export / "model.onnx"))
        if preset != "plain":
            groups = matmuls_by_weight(model)
            ignored = [name for weight in ranking[:ignore] for name in groups.get(weight, [])]
            advanced = AdvancedQuantizationParameters()
            if len(rest) > 1:
                advanced.smooth_quant_alphas = AdvancedSmoothQuantParameters(matmul=float(rest[1]))
            start = time.perf_counter()
            model = nncf.quantize(model, calibration, preset=getattr(nncf.QuantizationPreset, preset.upper()),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=args.calibration_rows,
                                  ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
                                  advanced_parameters=advanced)
            print(f"{config}: quantized in {time.perf_counter() - start:.0f} s ({len(ignored)} MatMuls ignored)",
                  flush=True)
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                ov.save_model(model, str(args.save / (config.replace(":", "_") + ".xml")))
        properties = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": args.threads,
                      "PERFORMANCE_HINT": "LATENCY"}
        request = core.compile_model(model, "CPU", properties).create_infer_request()
        compiled[config] = request
    report = {"length": args.length, "threads": args.threads, "configs": {}}
    for config, request in compiled.items():
        entry = report["configs"][config] = {"times": []}
        for label, feeds in inputs.items():
            request.infer({n: feeds[n] for n in names})
            output = request.get_output_tensor(0).data.copy()
            pooled, lowest = cosines(references[label], output, np.ones(output.shape[:2], dtype=bool))
            entry[label] = {"pooled_cosine": round(pooled, 6), "min_token_cosine": round(lowest, 5)}
    feeds = inputs["word pieces"]
    for _ in range(args.repeat):
        for config, request in compiled.items():
            start = time.perf_counter()
            request.infer({n: feeds[n] for n in names})
            report["configs"][config]["times"].append(time.perf_counter() - start)
    plain = next((c for c in compiled if c.startswith("plain:bf16")), None)
    for config, entry in report["configs"].items():
        entry["ms"] = round(statistics.median(entry.pop("times")) * 1000, 1)
        speed = f" {report['configs'][plain]['ms'] / entry['ms']:.2f}x plain:bf16" if plain else ""
        quality = "  ".join(f"{label}: {v['pooled_cosine']:.6f} / {v['min_token_cosine']:.5f}"
                            for label, v in entry.items() if isinstance(v, dict))
        print(f"{config:24s} {entry['ms']:7.1f} ms{speed}  {quality}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
