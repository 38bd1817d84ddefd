"""export.json's graph list as its readers (deploy, serve, bench, loading) get it: the list an export
writes, and the list derived for folders written before it (their keys as those exports wrote them)."""
import json
import sys
from pathlib import Path

import pytest

from lsg_export.errors import LSGExportError
from lsg_export.graph_list import GraphEntry, check_graph_files, find_graph, graph_list, single_graph

sys.path.insert(0, str(Path(__file__).parent))
from _cli import assert_user_error, invoke  # noqa: E402

LISTED = {"graphs": [
    {"name": "encoder", "file": "encoder_model.onnx", "inputs": ["input_ids", "attention_mask"],
     "outputs": ["last_hidden_state"], "external_data": False, "nodes": 120},
    {"name": "decoder_merged", "file": "decoder_model_merged.onnx", "inputs": ["input_ids", "use_cache_branch"],
     "outputs": ["logits"], "external_data": False}]}


def test_the_written_list():
    graphs = graph_list(LISTED)
    assert graphs == [GraphEntry("encoder", "encoder_model.onnx", ("input_ids", "attention_mask"),
                                 ("last_hidden_state",)),
                      GraphEntry("decoder_merged", "decoder_model_merged.onnx", ("input_ids", "use_cache_branch"),
                                 ("logits",))]
    assert find_graph(graphs, "decoder_merged").file == "decoder_model_merged.onnx"
    assert find_graph(graphs, "decoder") is None


def test_an_encoder_export_from_before_the_list():
    meta = {"task": "feature-extraction", "inputs": ["input_ids", "attention_mask"], "outputs": ["last_hidden_state"],
            "graph": {"nodes": 300, "domains": [""], "ir_version": 10, "external_data": True}}
    assert graph_list(meta) == [GraphEntry("model", "model.onnx", ("input_ids", "attention_mask"),
                                           ("last_hidden_state",), True)]


@pytest.mark.parametrize("merged", [True, False])
def test_a_seq2seq_export_from_before_the_list(merged):
    files = ["encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"]
    files += ["decoder_model_merged.onnx"] * merged
    # those exports wrote "graphs" as {file: {...}}
    meta = {"seq2seq": True, "files": files, "merged_decoder": merged,
            "graphs": {file: {"nodes": 10, "seconds": 1.0} for file in files}}
    graphs = graph_list(meta)
    assert [g.file for g in graphs] == files
    assert [g.name for g in graphs] == ["encoder", "decoder", "decoder_with_past", "decoder_merged"][:len(files)]
    assert all(g.inputs is None and g.outputs is None for g in graphs)
    del meta["files"]  # the first seq2seq exports: the files follow merged_decoder
    assert graph_list(meta) == graphs


def test_missing_files_and_single_graph(tmp_path):
    graphs = graph_list(LISTED)
    (tmp_path / "encoder_model.onnx").write_bytes(b"")
    with pytest.raises(LSGExportError, match=r": no decoder_model_merged\.onnx$"):
        check_graph_files(tmp_path, graphs)
    with pytest.raises(LSGExportError, match=r"holds 2 graphs \(encoder_model\.onnx, decoder_model_merged\.onnx\); "
                                             r"one graph only$"):
        single_graph(tmp_path, graphs, "one graph only")
    assert single_graph(tmp_path, graphs[:1], "one graph only") is graphs[0]


def test_deploy_and_serve_refuse_an_export_of_several_graphs(tmp_path):
    """Several graphs that are not an encoder-decoder's are refused; an encoder-decoder's (served as a summariser:
    test_summarise.py) are read from the list, and its missing files named."""
    folder = tmp_path / "two-onnx"
    folder.mkdir()
    two = {"graphs": [{"name": "model", "file": "model.onnx"}, {"name": "other", "file": "other.onnx"}]}
    (folder / "export.json").write_text(json.dumps({"seq": 64, **two, "validation": {"passed": True}}))
    bart = tmp_path / "bart-onnx"
    bart.mkdir()
    (bart / "export.json").write_text(json.dumps({"seq": 64, **LISTED, "validation": {"passed": True}}))
    for command in ("deploy", "serve"):
        assert_user_error(invoke(command, folder), "holds 2 graphs", "deploy and serve take an export of one graph")
        assert_user_error(invoke(command, bart), "no encoder_model.onnx, decoder_model_merged.onnx")
    assert not (tmp_path / "two-onnx-deploy").exists() and not (tmp_path / "bart-onnx-deploy").exists()
