"""The exported-graph cache (lsg_export/onnx/graph_cache.py): an entry is reused only while its stamp
matches, and restoring copies the kept graphs (the export's later steps change its copy, never the
kept one). The bench's use of it, one torch.export per attention kind: tests/test_bench.py."""
import os
from types import SimpleNamespace

from lsg_export.onnx.graph_cache import GraphCache

FEATURES = {"task": "feature-extraction", "outputs": ["last_hidden_state"], "pooling": None}


def model_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "lsg-bert", "hidden_size": 32}')
    (folder / "model.safetensors").write_bytes(b"weights")
    return SimpleNamespace(path=folder)


def test_kept_graphs_come_back_while_the_stamp_matches(tmp_path):
    info, gather = model_folder(tmp_path), SimpleNamespace(name="gather")
    cache = GraphCache(tmp_path / "graphs")
    stamp = cache.stamp(info, FEATURES, ["model.onnx"], gather, "cpu", 18, 128)
    exported = tmp_path / "first"
    exported.mkdir()
    (exported / "model.onnx").write_bytes(b"graph as exported")
    records = {"model.onnx": {"nodes": 3, "external_data": False, "seconds": 1.5}}
    assert cache.restore(stamp, exported) is None  # nothing kept yet
    cache.store(stamp, exported, records)
    (exported / "model.onnx").write_bytes(b"graph optimised in place")  # the first export's later steps

    second = tmp_path / "second"
    second.mkdir()
    assert cache.restore(stamp, second) == records
    assert (second / "model.onnx").read_bytes() == b"graph as exported"

    # anything the graphs depend on changes the stamp: no reuse
    pooled = {**FEATURES, "outputs": ["last_hidden_state", "sentence_embedding"], "pooling": {"mode": "mean"}}
    other = [cache.stamp(info, {"task": "fill-mask"}, ["model.onnx"], gather, "cpu", 18, 128),
             cache.stamp(info, pooled, ["model.onnx"], gather, "cpu", 18, 128),
             cache.stamp(info, FEATURES, ["model.onnx"], SimpleNamespace(name="custom-op"), "cpu", 18, 128),
             cache.stamp(info, FEATURES, ["model.onnx"], gather, "cpu", 18, 256)]
    (info.path / "config.json").write_text('{"model_type": "lsg-bert", "hidden_size": 64}')
    other.append(cache.stamp(info, FEATURES, ["model.onnx"], gather, "cpu", 18, 128))
    (info.path / "config.json").write_text('{"model_type": "lsg-bert", "hidden_size": 32}')
    os.utime(info.path / "model.safetensors", (1, 1))
    other.append(cache.stamp(info, FEATURES, ["model.onnx"], gather, "cpu", 18, 128))
    third = tmp_path / "third"
    third.mkdir()
    for changed in other:
        assert changed != stamp and cache.restore(changed, third) is None
    assert not (third / "model.onnx").exists()


def test_graphs_with_external_data_are_not_kept(tmp_path):
    info = model_folder(tmp_path)
    cache = GraphCache(tmp_path / "graphs")
    stamp = cache.stamp(info, FEATURES, ["model.onnx"], SimpleNamespace(name="gather"), "cpu", 18, 128)
    (tmp_path / "model.onnx").write_bytes(b"graph")
    cache.store(stamp, tmp_path, {"model.onnx": {"nodes": 3, "external_data": True, "seconds": 1.0}})
    assert cache.restore(stamp, tmp_path / "model") is None and not (tmp_path / "graphs").exists()
