"""The op library's ONNX Runtime minimum agrees everywhere it is stated: the C API version lsg_ops.cc asks for,
lsg_export's MIN_ONNXRUNTIME, and the matrix scripts/test-ort-versions.sh recorded on real wheels
(custom_ops/ort-versions.json, copied into docs/deployment.md); the Triton image the deploy README names ships
an onnxruntime of that matrix that loads the library and opens the export. No venv is made here."""
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("ort_versions_script", ROOT / "scripts" / "ort_versions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def minor(version):
    return int(version.split(".")[1])


@pytest.mark.quick
def test_minimum_is_what_the_wheels_showed():
    from lsg_export.ops.session import MIN_ONNXRUNTIME
    script = load_script()
    data = json.loads(script.RESULTS.read_text())
    api = int(re.search(r"constexpr uint32_t kOrtApiVersion = (\d+);",
                        (ROOT / "custom_ops" / "src" / "lsg_ops.cc").read_text()).group(1))
    assert api == script.library_api_version() == data["library_api_version"] == minor(MIN_ONNXRUNTIME) == 17
    assert [row["onnxruntime"] for row in data["rows"]] == script.VERSIONS  # the recorded run tried every wheel
    assert minor(data["oldest_working"]) == api
    for row in data["rows"]:
        if minor(row["onnxruntime"]) >= api:
            assert row["loads"] and row["same_outputs"] and row["max_abs_diff"] <= data["atol"], row
        else:  # refused with the library's own line, naming the minimum
            assert not row["loads"] and f"needs ONNX Runtime >= {MIN_ONNXRUNTIME} (C API version {api})" in \
                row["error"], row
    assert any(minor(row["onnxruntime"]) < api for row in data["rows"])  # the refusal was seen, not assumed
    docs = (ROOT / "docs" / "deployment.md").read_text()
    table = docs[docs.index(script.TABLE_START) + len(script.TABLE_START):docs.index(script.TABLE_END)]
    assert table.strip() == script.markdown(data)


def test_readme_image_runs_the_library():
    from lsg_export.deploy.readme import TRITON_IMAGE, TRITON_IMAGE_ONNXRUNTIME
    script = load_script()
    data = json.loads(script.RESULTS.read_text())
    release = TRITON_IMAGE.rsplit(":", 1)[1].split("-")[0]  # "25.01"
    row = next(r for r in data["rows"] if minor(r["onnxruntime"]) == minor(TRITON_IMAGE_ONNXRUNTIME))
    first, last = row["triton"].split("-") if "-" in row["triton"] else (row["triton"], row["triton"])
    assert first <= release <= last  # the matrix's wheel is the minor that release ships
    assert row["loads"] and row["same_outputs"] and row["export_loads"]
    docs = (ROOT / "docs" / "deployment.md").read_text()
    assert f"| {release}, " in docs or f"| {release} |" in docs  # and the Triton table lists the release
