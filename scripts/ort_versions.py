"""The custom-op library on older ONNX Runtime wheels (scripts/test-ort-versions.sh runs it).

With today's onnxruntime: build the op library once, export a tiny LSG bert with `--attention custom-op`
(kept under .ci/ort-versions/ between runs) and run it on fixed inputs. Then, in one throwaway virtual
environment per wheel of VERSIONS (`pip install --no-deps onnxruntime==X numpy` only, pip's cache reused),
load the same library and run the same graph: versions from the library's minimum on must load it and give
today's outputs (float32 tolerance), older ones must refuse it with the library's one-line message.
The results go to custom_ops/ort-versions.json (what tests/test_ort_versions.py and docs/deployment.md's
table are checked against) and are printed as a Markdown table.

    python scripts/ort_versions.py [VERSION ...]     (default: VERSIONS)
    python scripts/ort_versions.py --run MODEL LIBRARY FEEDS OUT   (inside a venv: numpy + onnxruntime only)
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".ci" / "ort-versions"
RESULTS = ROOT / "custom_ops" / "ort-versions.json"
DOCS = ROOT / "docs" / "deployment.md"  # keeps the table between these markers
TABLE_START, TABLE_END = "<!-- ort-versions: scripts/ort_versions.py writes this table -->", "<!-- /ort-versions -->"
ATOL = 1e-4  # float32: what the export's own validation allows between ONNX Runtime and PyTorch
SEQ = 64
# One wheel per ONNX Runtime minor version that a Triton release of 24.01-26.07 ships (the Triton server's
# build.py at each release tag names it), the Triton patch release where PyPI has it (1.17.2 is not there).
TRITON = {"1.16.3": "24.01-24.02", "1.17.3": "24.03-24.04", "1.18.1": "24.05-24.07", "1.19.2": "24.08-24.11",
          "1.20.1": "24.12-25.02", "1.21.0": "25.03-25.04", "1.22.0": "25.05-25.06", "1.23.2": "25.08-26.01",
          "1.24.4": "26.02-26.06", "1.27.0": "26.07"}
VERSIONS = list(TRITON)
REFUSAL = "the LSG custom-op library (ai.lsg) needs ONNX Runtime >= 1."


def library_api_version():
    """kOrtApiVersion of custom_ops/src/lsg_ops.cc: the C API version the library asks for."""
    import re
    text = (ROOT / "custom_ops" / "src" / "lsg_ops.cc").read_text()
    return int(re.search(r"constexpr uint32_t kOrtApiVersion = (\d+);", text).group(1))


def minor(version):
    return int(version.split(".")[1])


def first_line(error):
    """The error's first line, paths inside this checkout made relative (the JSON is committed)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0].replace(str(ROOT) + os.sep, "")


def run_model(model, library, feeds, out):
    """In the venv: register the library, open the export as written (its IR version may be newer than the
    runtime reads) and run the same graph at the lowest IR version its opsets allow; save the outputs and
    print one JSON line."""
    import numpy as np
    import onnxruntime as ort

    row = {"onnxruntime": ort.__version__, "loads": False, "error": None, "export_loads": None}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        options.register_custom_ops_library(library)
    except Exception as error:  # the row records it: the caller decides whether it was expected
        row["error"] = first_line(error)
        print(json.dumps(row))
        return
    row["loads"] = True
    try:
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        row["export_loads"] = True
    except Exception as error:
        row["export_loads"], row["export_error"] = False, first_line(error)
    session = ort.InferenceSession(str(Path(model).parent.parent / "export-min-ir" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    inputs = dict(np.load(feeds))
    names = [o.name for o in session.get_outputs()]
    results = session.run(names, {i.name: inputs[i.name] for i in session.get_inputs()})
    np.savez(out, **dict(zip(names, results)))
    print(json.dumps(row))


def make_export():
    """The tiny custom-op export and its inputs (made once, kept under WORK)."""
    import numpy as np
    export = WORK / "export"
    feeds = WORK / "feeds.npz"
    if (export / "export.json").is_file() and feeds.is_file() and (WORK / "export-min-ir" / "model.onnx").is_file():
        return export / "model.onnx", feeds
    sys.path.insert(0, str(ROOT / "tests"))
    from _tiny import save_tiny_checkpoint

    from lsg_export import convert
    from lsg_export.onnx import export_onnx
    original = save_tiny_checkpoint("bert", WORK / "original-bert")
    convert(str(original), WORK / "lsg-bert", max_sequence_length=SEQ, architecture="BertModel", block_size=8,
            sparse_block_size=8, num_global_tokens=2, force=True)
    result = export_onnx(WORK / "lsg-bert", export, seq=SEQ, lengths=[SEQ], attention="custom-op", force=True)
    if not result.passed:
        raise SystemExit(f"error: the custom-op export failed its validation: {result.report.failure_message()}")
    import onnx
    graph = onnx.load(str(export / "model.onnx"))  # with its external data, saved inline below
    graph.ir_version = onnx.helper.find_min_ir_version_for(list(graph.opset_import), ignore_unknown=True)
    (WORK / "export-min-ir").mkdir(exist_ok=True)
    onnx.save_model(graph, str(WORK / "export-min-ir" / "model.onnx"))
    rng = np.random.default_rng(0)
    mask = np.ones((2, SEQ), dtype=np.int64)
    mask[1, 40:] = 0  # padding that crosses blocks
    np.savez(feeds, input_ids=rng.integers(5, 100, (2, SEQ)).astype(np.int64), attention_mask=mask,
             token_type_ids=np.zeros((2, SEQ), dtype=np.int64))
    return export / "model.onnx", feeds


def venv_python(version):
    """A venv with onnxruntime==version and numpy only (made once; numpy < 2 for wheels built before it)."""
    venv = WORK / f"venv-{version}"
    python = venv / "bin" / "python"
    marker = venv / "installed.ok"
    if not marker.is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True)
        numpy = "numpy<2" if minor(version) < 19 else "numpy"
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                        "--disable-pip-version-check", f"onnxruntime=={version}", numpy], check=True)
        marker.write_text(version)
    return python


def run_in(python, model, library, feeds, out):
    result = subprocess.run([str(python), __file__, "--run", str(model), str(library), str(feeds), str(out)],
                            capture_output=True, text=True, timeout=600)
    lines = result.stdout.strip().splitlines()
    if result.returncode or not lines:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        return {"loads": False, "error": f"crashed (exit {result.returncode}): {' | '.join(tail)}"}
    return json.loads(lines[-1])


def compare(reference, out):
    import numpy as np
    ref, got = np.load(reference), np.load(out)
    if sorted(ref.files) != sorted(got.files):
        return float("inf")
    return max(float(np.max(np.abs(ref[k].astype(np.float64) - got[k].astype(np.float64)))) for k in ref.files)


def markdown(data):
    lines = ["| onnxruntime | Triton releases shipping this minor | loads the library | same outputs as "
             f"{data['reference']} (max abs diff) | opens the export as written (IR {data['export_ir_version']}) |",
             "|---|---|---|---|---|"]
    for row in data["rows"]:
        loads = "yes" if row["loads"] else "no: " + (row["error"] or "").split(" : ")[-1]
        same = "-" if row["max_abs_diff"] is None else (
            f"{'yes' if row['same_outputs'] else 'NO'} ({row['max_abs_diff']:.1e})")
        opens = {None: "-", True: "yes", False: "no"}[row["export_loads"]]
        lines.append(f"| {row['onnxruntime']} | {row['triton'] or '-'} | {loads} | {same} | {opens} |")
    return "\n".join(lines)


def write_docs_table(data):
    text = DOCS.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    DOCS.write_text(text[:start] + "\n" + markdown(data) + "\n" + text[end:])


def main(versions):
    import onnxruntime

    from lsg_export.ops import library_path
    WORK.mkdir(parents=True, exist_ok=True)
    api = library_api_version()
    library = library_path()
    model, feeds = make_export()
    reference = WORK / f"out-{onnxruntime.__version__}.npz"
    today = run_in(sys.executable, model, library, feeds, reference)
    if not today["loads"]:
        raise SystemExit(f"error: today's onnxruntime does not run the export: {today['error']}")
    rows, problems = [], []
    for version in versions:
        started = time.perf_counter()
        out = WORK / f"out-{version}.npz"
        out.unlink(missing_ok=True)
        row = {"onnxruntime": version, "triton": TRITON.get(version), **run_in(venv_python(version), model,
                                                                                  library, feeds, out)}
        row["max_abs_diff"] = compare(reference, out) if row["loads"] else None
        row["same_outputs"] = None if row["max_abs_diff"] is None else row["max_abs_diff"] <= ATOL
        expected_to_load = minor(version) >= api
        if expected_to_load and not (row["loads"] and row["same_outputs"]):
            problems.append(f"{version}: {row['error'] or 'outputs differ'}")
        if not expected_to_load and (row["loads"] or REFUSAL not in (row["error"] or "")):
            problems.append(f"{version}: expected the library's refusal, got {row['error'] or 'a session'}")
        rows.append(row)
        print(f"onnxruntime {version}: loads={row['loads']} same={row['same_outputs']} "
              f"diff={row['max_abs_diff']} ({time.perf_counter() - started:.0f} s)", flush=True)
    loading = [r["onnxruntime"] for r in rows if r["loads"] and r["same_outputs"]]
    import onnx
    ir_version = onnx.load(str(model), load_external_data=False).ir_version
    data = {"library_api_version": api, "reference": onnxruntime.__version__, "atol": ATOL,
            "export_ir_version": ir_version,
            "oldest_working": min(loading, key=lambda v: tuple(map(int, v.split(".")))) if loading else None,
            "rows": rows}
    if versions == VERSIONS:  # a partial run does not replace the recorded matrix
        RESULTS.write_text(json.dumps(data, indent=1) + "\n")
        write_docs_table(data)
    print(markdown(data))
    if problems:
        raise SystemExit("error: " + "; ".join(problems))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run"]:
        run_model(*sys.argv[2:6])
    else:
        main(sys.argv[1:] or VERSIONS)
