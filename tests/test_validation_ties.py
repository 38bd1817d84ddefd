"""Tie-aware validation: near-ties of the norm selection pass only when a swapped PyTorch run reproduces the
other output; a wrong graph fails at every length; lengths without near-ties are judged as before."""
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from lsg_export.onnx.ties import TIE_RTOL, SelectionProbe, near_ties, swap_pick
from lsg_export.onnx.validate import Comparison, ValidationReport, compare, cosines

from _onnx_cases import case_result

pytestmark = pytest.mark.xdist_group("minilm")  # with the MiniLM export's other tests (one worker exports it)
GPL3 = Path("/usr/share/common-licenses/GPL-3")
needs_gpl3 = pytest.mark.skipif(not GPL3.is_file(), reason="no /usr/share/common-licenses/GPL-3 on this system")


# --- the selection and its margins -------------------------------------------------------------------

@pytest.mark.quick
def test_near_ties_and_swap_on_known_norms():
    # one head, chunks of 4 keys keeping 2: chunk 0 has a margin of 1e-7 relative, chunk 1 a clear gap,
    # chunk 2 a kept key of norm > 0 against masked keys of norm 0 (no tie: masked keys change nothing)
    norms = torch.tensor([[[5.0, 1.0, 3.0, 3.0 * (1 - 1e-7), 9.0, 1.0, 8.0, 2.0, 4.0, 0.0, 0.0, 0.0]]])
    ties = near_ties("layer", norms, chunk=4, sparsity_factor=2, rtol=TIE_RTOL)
    assert [(t.chunk, t.kept, t.dropped) for t in ties] == [(0, 2, 3)]
    assert ties[0].margin == pytest.approx(3e-7, rel=0.5) and ties[0].norm == 3.0
    from lsg_export.modeling.lsg_attention import norm_top_positions
    index = norm_top_positions(norms, 4, 2)
    assert sorted(index[0, 0, :2].tolist()) == [0, 2]
    assert swap_pick(index, ties[0], keep=2) == 1
    assert sorted(index[0, 0, :2].tolist()) == [0, 3] and sorted(index[0, 0, 2:4].tolist()) == [4, 6]
    assert swap_pick(index, ties[0], keep=2) == 0  # its kept key is no longer picked: nothing to swap


@pytest.mark.quick
def test_cosines_of_known_vectors():
    reference = np.array([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    got = np.array([[[1.0, 0.0], [1.0, 1.0], [-7.0, 3.0]]])  # the third token is padding
    pooled, token = cosines(reference, got, np.array([[True, True, False]]))
    # mean of the real tokens: (0.5, 0.5) against (1, 0.5); lowest token: (0, 1) against (1, 1)
    assert pooled == pytest.approx(0.75 / (np.sqrt(0.5) * np.sqrt(1.25)))
    assert token == pytest.approx(1 / np.sqrt(2))
    assert cosines(np.array([[1.0, 2.0]]), np.array([[2.0, 4.0]])) == (pytest.approx(1.0), None)


@pytest.mark.quick
def test_length_without_near_ties_is_judged_as_before():
    calls = []
    rerun = lambda swaps: calls.append(swaps)  # noqa: E731  (must not be called: no near-tie)
    report = ValidationReport(1e-4, True, 2, [7], "random ids")
    report.add_length(7, [Comparison(7, "last_hidden_state", 3e-3, 1e-5, ok=False)], ties=[], rerun=rerun)
    assert not report.passed and report.failed_lengths == [7] and not calls
    assert report.to_dict()["near_ties"]["7"] == {"near_ties": 0, "smallest_relative_margin": None}


# --- on the real MiniLM-LSG (defaults: block 128, norm, 1 global) ------------------------------------

@pytest.fixture(scope="module")
def minilm_export(exported):
    return Path(case_result(exported, "minilm")["onnx"])


@pytest.fixture(scope="module")
def minilm_module(exported):
    from lsg_export.onnx.pipeline import limit_positions, load_torch_model
    from lsg_export.onnx.tasks import TaskModule, read_model_folder
    info = read_model_folder(case_result(exported, "minilm")["folder"])
    model = load_torch_model(info)
    limit_positions(model, 4096 + info.family.position_offset)
    return info, TaskModule(model, "feature-extraction").eval()


def gpl3_ids(folder):
    from lsg_export.onnx.validate import text_ids
    return text_ids(folder, GPL3)


class FlippedSelection:
    """Another implementation of the model: PyTorch itself, ranking the near-tie of smallest margin the
    other way (what ONNX Runtime does on some CPUs at some lengths). Answers like an InferenceSession."""

    def __init__(self, module, names):
        self.module, self.names, self.flipped = module, names, []

    def get_inputs(self):
        return [type("Input", (), {"name": name}) for name in self.names]

    def run(self, output_names, feeds):
        inputs = [torch.from_numpy(feeds[name]) for name in self.names]
        with torch.no_grad(), SelectionProbe(self.module) as probe:
            self.module(*inputs)
        tie = min(probe.ties, key=lambda t: t.margin / t.norm)
        with torch.no_grad(), SelectionProbe(self.module, [tie]) as swapped:
            outputs = self.module(*inputs)
        self.flipped.append((tie, swapped.applied))
        return [t.numpy() for t in outputs]


@needs_gpl3
def test_flipped_near_tie_passes_as_tie(minilm_export, minilm_module):
    info, module = minilm_module
    other = FlippedSelection(module, ["input_ids", "attention_mask", "token_type_ids"])
    report = compare(other, module, info, "feature-extraction", ["last_hidden_state"], [1500], 2, 1e-4, True,
                     ids=gpl3_ids(minilm_export), inputs_label="text GPL-3")
    (tie, applied), = other.flipped
    assert applied == 1 and tie.margin / tie.norm < TIE_RTOL
    row, = report.rows
    assert row.max_abs_diff > 1e-3  # one pick moves the outputs far beyond rounding...
    assert report.passed and row.ok and row.tie["picks_swapped"] == 1
    assert row.tie["max_abs_diff"] < 1e-5  # ...and PyTorch given the same pick reproduces them
    data = report.to_dict()
    assert data["tied_lengths"] == [1500] and data["near_ties"]["1500"]["near_ties"] >= 1


@needs_gpl3
def test_gpl3_validation_passes_with_ties_named(minilm_export, tmp_path):
    from lsg_export.onnx import validate_onnx
    folder = tmp_path / "export"
    shutil.copytree(minilm_export, folder)
    report = validate_onnx(folder, lengths=[1, 500, 1500, 4096], text=str(GPL3))
    assert report.passed, report.failure_message()
    outputs = ("last_hidden_state", "sentence_embedding")  # MiniLM's pooling, then its short graph's rows
    assert {row.output for row in report.rows} == {*outputs, *(f"{o} (model_short.onnx, <= 256)" for o in outputs)}
    for row in report.rows:  # either within 1e-4, or a near-tie whose swapped run is
        assert row.max_abs_diff <= 1e-4 or (row.tie and row.tie["max_abs_diff"] <= 1e-4 and row.tie["picks_swapped"])
        assert row.pooled_cosine > 0.9999
        if row.output.startswith("last_hidden_state"):
            assert row.min_token_cosine > 0.999
    assert report.near_ties[4096]["near_ties"] > 0  # GPL-3 at 4096 holds near-ties of the norm selection
    recorded = json.loads((folder / "export.json").read_text())["validation"]
    assert recorded["run"] == "validate" and recorded["inputs"] == "text GPL-3"
    assert recorded["tied_lengths"] == report.tied_lengths


def changed_weight_copy(export, folder):
    """A copy of the export whose last LayerNorm bias has one element moved by 1e-3."""
    shutil.copytree(export, folder)
    model = onnx.load(str(folder / "model.onnx"))
    bias = [t for t in model.graph.initializer if "LayerNorm.bias" in t.name][-1]
    values = onnx.numpy_helper.to_array(bias).copy()
    values[0] += 1e-3
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(folder / "model.onnx"))
    return bias.name


@needs_gpl3
def test_changed_weight_fails_at_every_length(minilm_export, tmp_path):
    from lsg_export.onnx import validate_onnx
    changed_weight_copy(minilm_export, tmp_path / "changed")
    report = validate_onnx(tmp_path / "changed", lengths=[37, 1500], text=str(GPL3))
    assert report.near_ties[1500]["near_ties"] > 0  # the tie search ran there, and found no explanation
    assert not report.passed and report.failed_lengths == [37, 1500]
    assert not report.tied_lengths
    tokens = [row for row in report.rows if row.output == "last_hidden_state"]
    assert [row.length for row in tokens] == [37, 1500]
    assert all(row.max_abs_diff > 0.9e-3 for row in tokens)  # the bias moves every token by 1e-3
    for row in report.rows:
        if row.output == "sentence_embedding":  # and the normalised mean of the tokens by less, not nothing
            assert 1e-5 < row.max_abs_diff < 1e-3

