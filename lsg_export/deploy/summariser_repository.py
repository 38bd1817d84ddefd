"""`lsg-export deploy` of an encoder-decoder export: a Triton repository that takes text and returns the summary.

    REPO/<name>/config.pbtxt                 python backend: text in, summary out (the model clients call)
    REPO/<name>/1/model.py                   tokenize, encoder, decoding loop, detokenize (BLS to the graphs)
    REPO/<name>/1/decoding.py                the decoding loop (lsg_export/deploy/decoding.py, copied)
    REPO/<name>/1/tokenizer.json, ...        the tokenizer, generation_config.json and config.json
    REPO/<name>-encoder/1/encoder_model.onnx             onnxruntime backend
    REPO/<name>-decoder/1/decoder_model_merged.onnx      (or <name>-decoder + <name>-decoder-with-past)
    REPO/inferenceservice.yaml               KServe InferenceService (Triton runtime, model format triton)
    REPO/README.md

The graph models take whole batches from the python model (max_batch_size 0: the decoder's past and the merged
decoder's use_cache_branch have no batch dim to share between requests)."""
import json
import shutil
from pathlib import Path

from ..folders import atomic_folder, check_output
from . import decoding, kserve, triton
from .triton import CONTAINER_REPOSITORY

MODEL_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
               "config.json")
SUFFIXES = {"encoder": "encoder", "decoder_merged": "decoder", "decoder": "decoder",
            "decoder_with_past": "decoder-with-past"}
MANIFEST = "inferenceservice.yaml"


def graph_model_names(name, export):
    """{graph role: Triton model name} of the export's graphs."""
    return {role: f"{name}-{SUFFIXES[role]}" for role in export.graphs}


def graph_config(export, role, model_name, instances, device, op_library):
    """The onnxruntime-backend ModelConfig of one graph (no batching: the python model sends whole batches)."""
    graph = export.graphs[role]
    config = triton.model_config(graph, model_name, max_batch_size=0, instances=instances, device=device,
                                 dynamic_batching=False, op_library=op_library)
    config.default_model_filename = graph.entry.file
    return config


def generation_config(export, name, models, instances):
    """The python-backend ModelConfig of the text-in, summary-out model."""
    pb = triton.model_config_pb2()
    string = pb.DataType.Value("TYPE_STRING")
    int32 = pb.DataType.Value("TYPE_INT32")
    layers, heads, head_dim = export.decoder_shape
    config = pb.ModelConfig(
        name=name, backend="python", max_batch_size=0,
        input=[pb.ModelInput(name=decoding.TEXT_INPUT, data_type=string, dims=[-1], optional=True),
               pb.ModelInput(name="text", data_type=string, dims=[-1], optional=True),
               *[pb.ModelInput(name=key, data_type=int32, dims=[1], optional=True)
                 for key in decoding.REQUEST_PARAMETERS]],
        output=[pb.ModelOutput(name=decoding.TEXT_OUTPUT, data_type=string, dims=[-1])],
        instance_group=[pb.ModelInstanceGroup(count=instances, kind=pb.ModelInstanceGroup.KIND_CPU)],
        version_policy=pb.ModelVersionPolicy(latest=pb.ModelVersionPolicy.Latest(num_versions=1)))
    values = {"graph_models": json.dumps(models), "max_tokens": str(export.seq), "layers": str(layers),
              "heads": str(heads), "head_dim": str(head_dim)}
    for key, value in values.items():
        config.parameters[key].string_value = value
    return config


def deploy_summariser(export, output, name, *, instances=1, device="cpu", force=False):
    """Write the repository of the Seq2SeqExport `export` to `output`; returns (the python model's ModelConfig,
    the files written relative to `output`, the custom-op library's file name or None)."""
    check_output(output, force)
    library = op_library = None
    if export.needs_custom_ops:
        from ..ops.build import library_path
        library = library_path()
        op_library = library.name
    models = graph_model_names(name, export)
    configs = {role: graph_config(export, role, models[role], instances, device,
                                  op_library if role == "encoder" and library else None) for role in models}
    config = generation_config(export, name, models, instances)
    model_bytes = sum((export.path / f).stat().st_size for graph in export.graphs.values() for f in graph.files)
    service = kserve.inference_service(name, storage_uri=f"pvc://lsg-models/{Path(output).name}",
                                       model_bytes=model_bytes, instances=instances, device=device,
                                       max_batch_size=1, model_format="triton")
    here = Path(__file__).resolve().parent
    with atomic_folder(output, force) as tmp:
        for role, graph in export.graphs.items():
            version = tmp / models[role] / "1"
            version.mkdir(parents=True)
            for file in graph.files:
                shutil.copy2(export.path / file, version / file)
            (tmp / models[role] / "config.pbtxt").write_text(triton.to_text(configs[role]))
        if library is not None:
            shutil.copy2(library, tmp / models["encoder"] / op_library)
        version = tmp / name / "1"
        version.mkdir(parents=True)
        shutil.copy2(here / "triton_model.py", version / "model.py")
        shutil.copy2(here / "decoding.py", version / "decoding.py")
        for file in MODEL_FILES:
            if (export.path / file).is_file():
                shutil.copy2(export.path / file, version / file)
        (tmp / name / "config.pbtxt").write_text(triton.to_text(config))
        (tmp / MANIFEST).write_text(kserve.to_yaml(service, header=(
            f"KServe InferenceService for the Triton repository written by lsg-export deploy (a summariser: the\n"
            f"python-backend model {name} and its graph models). Copy the repository folder to the volume\n"
            f"storageUri names (or change storageUri), then:\n  kubectl apply -f {MANIFEST}")))
        (tmp / "README.md").write_text(summariser_readme(export, name, models, Path(output).name, op_library))
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    return config, files, op_library


def summariser_readme(export, name, models, repo_name, op_library):
    from .readme import TRITON_IMAGE
    settings = export.settings
    graphs = "\n".join(f"{models[role]}/1/{graph.entry.file:<32} {role} graph (onnxruntime backend)"
                       for role, graph in export.graphs.items())
    op_note = (f"\nThe encoder uses the LSG custom op: `{models['encoder']}/{op_library}` is named in its config.pbtxt "
               f"as `{CONTAINER_REPOSITORY}/{models['encoder']}/{op_library}`; mount the repository there.\n"
               if op_library else "")
    return f"""# Triton / KServe deployment of the summariser `{name}`

Written by `lsg-export deploy` from `{export.path}` (texts up to {export.seq} tokens; longer ones are refused,
never truncated). Generation follows the export's generation_config.json: {settings.new_tokens} new tokens at
most, {settings.num_beams} beam(s), length penalty {settings.length_penalty}, early stopping
{settings.early_stopping}; a request may change `max_new_tokens` and `num_beams`.

```
{name}/config.pbtxt                      python backend: text in, summary out
{name}/1/model.py                        tokenize, encoder, decoding loop, detokenize (BLS requests to the graphs)
{name}/1/decoding.py                     the decoding loop, numpy and `tokenizers` only (as `lsg-export serve`)
{graphs}
inferenceservice.yaml                    KServe InferenceService (runtime kserve-tritonserver, model format triton)
```
{op_note}
The python backend needs numpy and `tokenizers` in Triton's Python (`pip install tokenizers` in the image, or a
custom execution environment; the stock image has numpy).

## Triton on this machine

```bash
docker run --rm -p 8000:8000 -p 8001:8001 -v "$PWD/{repo_name}:{CONTAINER_REPOSITORY}" {TRITON_IMAGE} \\
  bash -c "pip install tokenizers && tritonserver --model-repository={CONTAINER_REPOSITORY}"
curl -s -d '{{"text_input": "a long report ...", "parameters": {{"max_new_tokens": 64, "num_beams": 4}}}}' \\
  localhost:8000/v2/models/{name}/generate
```

The same request works against `lsg-export serve` of the export. v2 `infer` takes `text_input` (or `text`),
BYTES, one string per row, and returns `text_output`.

## KServe

Copy this folder into the volume that `storageUri` in `inferenceservice.yaml` names (the PVC `lsg-models`, so
that `lsg-models/{repo_name}/{name}/config.pbtxt` exists), then `kubectl apply -f inferenceservice.yaml`.
"""
