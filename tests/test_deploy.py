"""`lsg-export deploy`: the Triton repository agrees with the ONNX graph (config.pbtxt parsed with
Triton's model-config protobuf from tritonclient), the manifest loads with the KServe SDK's models,
the custom-op library is copied and named, and bad input is refused with one line, nothing written."""
import json
import shutil

import pytest
import yaml

pytest.importorskip("kserve")
pytest.importorskip("tritonclient")
import _deploy_cases as cases
from _cli import assert_user_error, invoke

from lsg_export.deploy import kserve as manifests
from lsg_export.deploy import triton


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return cases.tiny_export(tmp_path_factory.getbasetemp())


def copy_export(export, folder, **meta_changes):
    shutil.copytree(export, folder)
    meta = json.loads((folder / "export.json").read_text())
    meta.update(meta_changes)
    (folder / "export.json").write_text(json.dumps(meta))
    return folder


def graph_signature(path):
    """(name, onnx elem type, dims with -1 for symbolic) of the graph's inputs and outputs, read with onnx."""
    import onnx
    graph = onnx.load(str(path), load_external_data=False).graph
    return [[(v.name, v.type.tensor_type.elem_type,
              [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]) for v in values]
            for values in (graph.input, graph.output)]


def read_config(repo, name):
    return triton.parse((repo / name / "config.pbtxt").read_text())


@pytest.mark.quick
def test_repository_agrees_with_the_graph(export, tmp_path):
    import onnx
    pb = triton.model_config_pb2()
    repo = tmp_path / "repo"
    result = invoke("deploy", export, "-o", repo, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    name = info["name"]
    assert name == "bert-cls-onnx" and info["op_library"] is None
    text_files = [f"{name}-tokenizer/config.pbtxt", f"{name}-text/config.pbtxt"] + [  # the export has a tokenizer
        f"{name}-tokenizer/1/{f}" for f in ("model.py", "text_tokens.py", "tokenizer.json", "tokenizer_config.json",
                                             "special_tokens_map.json", "config.json")]
    assert sorted(info["files"]) == sorted(["README.md", "inferenceservice.yaml", f"{name}/config.pbtxt",
                                            f"{name}/1/model.onnx", *text_files])
    assert info["text_model"] == f"{name}-text"
    assert (repo / name / "1" / "model.onnx").read_bytes() == (export / "model.onnx").read_bytes()

    config = read_config(repo, name)
    assert config.name == name and config.backend == "onnxruntime" and config.max_batch_size == 8
    inputs, outputs = graph_signature(export / "model.onnx")
    elem = {onnx.TensorProto.INT64: pb.TYPE_INT64, onnx.TensorProto.FLOAT: pb.TYPE_FP32}
    for tensors, values in ((config.input, inputs), (config.output, outputs)):
        assert [t.name for t in tensors] == [v[0] for v in values]
        for tensor, (_, elem_type, dims) in zip(tensors, values):
            assert tensor.data_type == elem[elem_type]
            assert dims[0] == -1 and list(tensor.dims) == dims[1:]  # the batch dim is max_batch_size's
    assert [t.name for t in config.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert list(config.input[0].dims) == [-1] and list(config.output[0].dims) == [2]
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.kind, g.count) for g in config.instance_group] == [(pb.ModelInstanceGroup.KIND_CPU, 1)]
    assert not config.HasField("model_operations") and not config.HasField("optimization")

    text = (repo / "inferenceservice.yaml").read_text()
    service = manifests.from_yaml(text)
    assert (service.api_version, service.kind) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert service.metadata.name == name
    predictor = service.spec.predictor
    assert (predictor.min_replicas, predictor.max_replicas, predictor.scale_metric, predictor.scale_target) == \
        (1, 4, "concurrency", 8)
    model = predictor.model
    assert (model.model_format.name, model.runtime, model.protocol_version) == ("onnx", "kserve-tritonserver", "v2")
    assert model.storage_uri == "pvc://lsg-models/repo"
    assert model.resources.requests["cpu"] == "1" and model.resources.requests["memory"].endswith("Mi")
    assert "nvidia.com/gpu" not in model.resources.limits
    # every key of the YAML was understood by the SDK's models: they serialise back to the same document
    from kserve import ApiClient
    assert ApiClient().sanitize_for_serialization(service) == yaml.safe_load(text)

    readme = (repo / "README.md").read_text()
    assert f"--model-repository={triton.CONTAINER_REPOSITORY}" in readme and f'client.infer("{name}"' in readme
    assert "kubectl apply -f inferenceservice.yaml" in readme


def test_gpu_options_and_unbatched(export, tmp_path):
    pb = triton.model_config_pb2()
    result = invoke("deploy", export, "-o", tmp_path / "gpu", "--name", "lsg-cls", "--device", "gpu", "--instances", 2,
                    "--max-batch-size", 16, "--max-queue-delay-us", 500)
    assert result.exit_code == 0, result.output
    config = read_config(tmp_path / "gpu", "lsg-cls")
    assert config.name == "lsg-cls" and config.max_batch_size == 16
    assert [(g.kind, g.count) for g in config.instance_group] == [(pb.ModelInstanceGroup.KIND_GPU, 2)]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accelerators] == ["cuda"]
    service = manifests.from_yaml((tmp_path / "gpu" / "inferenceservice.yaml").read_text())
    assert service.spec.predictor.model.resources.limits["nvidia.com/gpu"] == "1"
    assert service.spec.predictor.model.resources.requests["cpu"] == "2"
    assert service.spec.predictor.scale_target == 32

    result = invoke("deploy", export, "-o", tmp_path / "flat", "--max-batch-size", 0, "--no-dynamic-batching")
    assert result.exit_code == 0, result.output
    config = read_config(tmp_path / "flat", "bert-cls-onnx")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [-1, -1] and list(config.output[0].dims) == [-1, 2]


def test_custom_op_library_is_copied_and_named(export, tmp_path):
    from lsg_export.ops import library_path, missing_build_tool
    missing = missing_build_tool()  # only a missing tool skips: a build failure fails the test
    if missing:
        pytest.skip(missing)
    library = library_path()
    folder = copy_export(export, tmp_path / "op-export", attention="custom-op")
    repo = tmp_path / "repo"
    result = invoke("deploy", folder, "-o", repo, "--name", "lsg-op", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["op_library"] == library.name
    assert (repo / "lsg-op" / library.name).read_bytes() == library.read_bytes()
    config = read_config(repo, "lsg-op")
    assert list(config.model_operations.op_library_filename) == [f"/mnt/models/lsg-op/{library.name}"]
    assert f"/mnt/models/lsg-op/{library.name}" in (repo / "README.md").read_text()


def test_external_data_is_copied(export, tmp_path):
    import onnx
    folder = tmp_path / "ext-export"
    shutil.copytree(export, folder)
    model = onnx.load(str(folder / "model.onnx"))
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)
    result = invoke("deploy", folder, "-o", tmp_path / "repo", "--name", "ext")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "repo/ext/1/model.onnx.data").read_bytes() == (folder / "model.onnx.data").read_bytes()
    (folder / "model.onnx.data").unlink()
    assert_user_error(invoke("deploy", folder, "-o", tmp_path / "repo2"), "model.onnx.data", "missing")
    assert not (tmp_path / "repo2").exists()


@pytest.mark.quick
def test_refusals_write_nothing(export, tmp_path):
    out = tmp_path / "out"
    no_model = copy_export(export, tmp_path / "no-model")
    (no_model / "model.onnx").unlink()
    assert_user_error(invoke("deploy", no_model, "-o", out), "model.onnx missing")
    assert_user_error(invoke("deploy", tmp_path / "absent", "-o", out), "no such folder")
    not_export = tmp_path / "not-export"
    not_export.mkdir()
    assert_user_error(invoke("deploy", not_export, "-o", out), "export.json")

    failed = copy_export(export, tmp_path / "failed", validation={"passed": False, "failed_lengths": [33]})
    assert_user_error(invoke("deploy", failed, "-o", out), "failed validation at lengths [33]", "--allow-unvalidated")
    never = copy_export(export, tmp_path / "never", validation=None)
    assert_user_error(invoke("deploy", never, "-o", out), "no validation result")
    assert_user_error(invoke("deploy", export, "-o", out, "--name", "Bad_Name"), "'bad-name'")
    assert_user_error(invoke("deploy", export, "-o", out, "--max-batch-size", 0), "--no-dynamic-batching")
    assert not out.exists()

    assert invoke("deploy", failed, "-o", out, "--allow-unvalidated").exit_code == 0
    assert read_config(out, "failed").name == "failed"


def test_force_and_atomic_write(export, tmp_path, monkeypatch):
    from lsg_export.deploy import deploy
    from lsg_export.errors import LSGExportError
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_user_error(invoke("deploy", export, "-o", out), "not empty", "--force")
    assert (out / "keep.txt").read_text() == "mine"

    def broken(*args):
        raise LSGExportError("README failed")

    monkeypatch.setattr("lsg_export.deploy.repository.repository_readme", broken)
    with pytest.raises(LSGExportError, match="README failed"):
        deploy(export, out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no temporary folder left
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # the old content is untouched
    monkeypatch.undo()

    result = deploy(export, out, force=True, name="again")
    assert result.path == out and not (out / "keep.txt").exists()
    assert read_config(out, "again").name == "again"
