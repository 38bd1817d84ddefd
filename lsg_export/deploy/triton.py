"""config.pbtxt for Triton's onnxruntime backend, built as Triton's own ModelConfig protobuf message.

The message class is tritonclient's generated `model_config_pb2`; the text is protobuf's text_format
of it, so every field name and enum is checked by the schema Triton itself parses with.
"""
import importlib.util
import sys
from pathlib import Path

from google.protobuf import text_format

from ..errors import LSGExportError
from .text_tokens import TEXT_INPUT

CONTAINER_REPOSITORY = "/mnt/models"  # where KServe mounts the repository (and the README's docker run)


def model_config_pb2():
    """tritonclient's model_config_pb2, loaded without tritonclient.grpc's __init__.

    That __init__ also registers Triton's gRPC service protos, whose message names
    (inference.ServerLiveRequest, ...) collide with KServe's copy of the same protocol in
    protobuf's default pool (kserve/kserve#3099); model_config.proto alone collides with nothing."""
    loaded = sys.modules.get("tritonclient.grpc.model_config_pb2") or sys.modules.get("_lsg_triton_model_config_pb2")
    if loaded is not None:
        return loaded
    try:
        import tritonclient
    except ImportError:
        raise LSGExportError("writing a Triton repository needs tritonclient: "
                             "pip install 'lsg-export[serve]'") from None
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("_lsg_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[spec.name] = module
    return module


def _data_type(pb, datatype):
    """Triton's config enum of a v2 datatype name (INT64 -> TYPE_INT64; BYTES -> TYPE_STRING)."""
    return pb.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


def _tensors(pb, cls, specs, batched):
    tensors = []
    for spec in specs:
        if batched and (not spec.shape or spec.shape[0] != -1):
            raise LSGExportError(f"{spec.name} has no symbolic batch dim ({list(spec.shape)}): deploy it with "
                                 f"--max-batch-size 0")
        tensors.append(cls(name=spec.name, data_type=_data_type(pb, spec.datatype),
                           dims=list(spec.shape[1:] if batched else spec.shape)))
    return tensors


def model_config(export, name, *, max_batch_size=8, instances=1, device="cpu", dynamic_batching=True,
                 max_queue_delay_us=100, op_library=None):
    """The ModelConfig message of `export` (an ExportFolder) for the onnxruntime backend.

    op_library: file name of the custom-op library beside the model folder (None: none)."""
    pb = model_config_pb2()
    if max_batch_size < 0 or instances < 1 or max_queue_delay_us < 0:
        raise LSGExportError("--max-batch-size and --max-queue-delay-us must be >= 0 and --instances >= 1")
    if dynamic_batching and max_batch_size == 0:
        raise LSGExportError("dynamic batching needs --max-batch-size >= 1 (or pass --no-dynamic-batching)")
    if device not in ("cpu", "gpu"):
        raise LSGExportError(f"--device must be cpu or gpu, got {device!r}")
    batched = max_batch_size > 0
    config = pb.ModelConfig(
        name=name, backend="onnxruntime", max_batch_size=max_batch_size,
        input=_tensors(pb, pb.ModelInput, export.inputs, batched),
        output=_tensors(pb, pb.ModelOutput, export.outputs, batched),
        instance_group=[pb.ModelInstanceGroup(
            count=instances,
            kind=pb.ModelInstanceGroup.KIND_GPU if device == "gpu" else pb.ModelInstanceGroup.KIND_CPU)],
        version_policy=pb.ModelVersionPolicy(latest=pb.ModelVersionPolicy.Latest(num_versions=1)),
    )
    if dynamic_batching:
        # requests are batched only with requests of the same sequence length (no ragged batching)
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    if device == "gpu":
        # ONNX Runtime's CUDA execution provider, one stream for copies and compute
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="cuda")
        accelerator.parameters["use_ep_level_unified_stream"] = "1"
    if op_library:
        # the onnxruntime backend dlopen()s the name as given: the path inside the serving container
        config.model_operations.op_library_filename.append(f"{CONTAINER_REPOSITORY}/{name}/{op_library}")
    return config


def tokenizer_config(export, name, max_length):
    """The ModelConfig of `name`, the python-backend tokenizer model of an encoder's export: BYTES `text` [batch]
    -> the graph's token inputs [batch, tokens]. Not batched by Triton (one request is already a batch of rows,
    tokenized together); the graph model behind it batches."""
    pb = model_config_pb2()
    token_inputs = [pb.ModelOutput(name=spec.name, data_type=_data_type(pb, spec.datatype), dims=[-1, -1])
                    for spec in export.inputs]
    config = pb.ModelConfig(
        name=name, backend="python", max_batch_size=0,
        input=[pb.ModelInput(name=TEXT_INPUT, data_type=pb.TYPE_STRING, dims=[-1])], output=token_inputs,
        instance_group=[pb.ModelInstanceGroup(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)],
        version_policy=pb.ModelVersionPolicy(latest=pb.ModelVersionPolicy.Latest(num_versions=1)),
    )
    config.parameters["max_length"].string_value = str(max_length)
    return config


def ensemble_config(export, name, tokenizer, graph):
    """The ModelConfig of `name`, the ensemble that takes `text` like `lsg-export serve`: the tokenizer model,
    then the graph model `graph`, whose outputs it returns. Not batched itself (max_batch_size 0: its tensors
    carry the batch dim, as the tokenizer's do; Triton accepts a non-batching model's [-1, d...] tensor into a
    batching model of dims [d...])."""
    pb = model_config_pb2()
    config = pb.ModelConfig(
        name=name, platform="ensemble", max_batch_size=0,
        input=[pb.ModelInput(name=TEXT_INPUT, data_type=pb.TYPE_STRING, dims=[-1])],
        output=[pb.ModelOutput(name=spec.name, data_type=_data_type(pb, spec.datatype), dims=list(spec.shape))
                for spec in export.outputs],
    )
    steps = config.ensemble_scheduling.step
    steps.add(model_name=tokenizer, model_version=-1, input_map={TEXT_INPUT: TEXT_INPUT},
              output_map={spec.name: spec.name for spec in export.inputs})
    steps.add(model_name=graph, model_version=-1, input_map={spec.name: spec.name for spec in export.inputs},
              output_map={spec.name: spec.name for spec in export.outputs})
    return config


def to_text(config):
    return text_format.MessageToString(config)


def parse(text):
    """config.pbtxt text -> ModelConfig (raises on anything Triton's schema rejects)."""
    pb = model_config_pb2()
    return text_format.Parse(text, pb.ModelConfig())
