"""REPO/README.md: the exact commands to serve a repository with Triton and with KServe."""
from tritonclient.utils import triton_to_np_dtype

from ..ops.session import MIN_ONNXRUNTIME
from .triton import CONTAINER_REPOSITORY

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.01-py3"
# what that release ships (the Triton server's build.py at tag v2.54.0); custom_ops/ort-versions.json has this
# onnxruntime loading the op library, giving today's outputs and opening an IR 10 export
TRITON_IMAGE_ONNXRUNTIME = "1.20.1"


def _tensor_lines(specs):
    return "\n".join(f"| `{s.name}` | {s.datatype} | {list(s.shape)} |" for s in specs)


def _opsets(graph):
    return ", ".join(f"{domain} {version}" for domain, version in (graph.get("opsets") or {}).items()) or "?"


def _example_shape(spec):
    """Batch 1, 5 tokens (symbolic dims)."""
    return [1] + [5 if d == -1 else d for d in spec.shape[1:]]


def _text_section(export, name, text_model):
    if not text_model:
        return ""
    return f"""
## Text in

`{text_model}` is an ensemble taking `text` (BYTES, one string per row) as `lsg-export serve` does: the python-backend
model `{name}-tokenizer` tokenizes it with the export's tokenizer.json (`text_tokens.py`, the functions `serve` runs),
then `{name}` runs the ids. A text longer than {export.seq} tokens fails its request with one line (never
truncated). The python backend needs `tokenizers` in the image: the `docker run` above installs it at start; for
KServe, build an image `FROM {TRITON_IMAGE}` with `RUN pip install tokenizers` and name it in the runtime.

```python
import numpy as np
from tritonclient.http import InferenceServerClient, InferInput

client = InferenceServerClient("localhost:8000")
text = InferInput("text", [2], "BYTES")
text.set_data_from_numpy(np.array([b"a first document", b"a second one"], dtype=np.object_))
print(client.infer("{text_model}", [text]).as_numpy("{export.outputs[0].name}").shape)
```
"""


def repository_readme(export, config, repo_name, op_library, manifest, text_model=None):
    name = config.name
    gpu = config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    graph = export.meta.get("final_graph") or export.meta.get("graph") or {}
    first = export.inputs[0]
    example_shape = _example_shape(first)
    feeds = "\n".join(f'inputs.append(InferInput("{s.name}", {_example_shape(s)}, "{s.datatype}"))\n'
                       f'inputs[-1].set_data_from_numpy(np.{"ones" if s.name == "attention_mask" else "zeros"}'
                       f'({_example_shape(s)}, dtype=np.{triton_to_np_dtype(s.datatype).__name__}))'
                       for s in export.inputs)
    op_note = (f"""
The graph uses the LSG custom op: `{name}/{op_library}` (built on the machine that ran `lsg-export deploy`,
for its CPU; rebuild it with `lsg-export build-ops` on a machine like the servers' if they differ) is named in
config.pbtxt as `{CONTAINER_REPOSITORY}/{name}/{op_library}`, so mount the repository at `{CONTAINER_REPOSITORY}`
as below (KServe mounts it there). The library needs ONNX Runtime {MIN_ONNXRUNTIME} or newer (Triton 24.03 on;
{TRITON_IMAGE} ships {TRITON_IMAGE_ONNXRUNTIME}); lsg-export's docs/deployment.md has the tested matrix.
""" if op_library else "")
    text_files = (f"\n{name}-tokenizer/1/model.py  python-backend tokenizer (+ text_tokens.py, the tokenizer files)"
                  f"\n{text_model}/config.pbtxt   ensemble: text -> {name}-tokenizer -> {name}" if text_model else "")
    start = (f'bash -c "pip install -q tokenizers && tritonserver --model-repository={CONTAINER_REPOSITORY}"'
             if text_model else f"tritonserver --model-repository={CONTAINER_REPOSITORY}")
    return f"""# Triton / KServe deployment of `{name}`

Written by `lsg-export deploy` from `{export.path}` ({export.meta.get("task")}, inputs up to {export.seq} tokens,
{export.meta.get("precision", "fp32")}, ONNX IR version {graph.get("ir_version", "?")}, opsets {_opsets(graph)}).

```
{name}/config.pbtxt      Triton model configuration (onnxruntime backend, max_batch_size {config.max_batch_size})
{name}/1/model.onnx      the graph{" + its external data" if export.data_files else ""}{text_files}
{manifest}   KServe InferenceService (runtime kserve-tritonserver, model format onnx, protocol v2)
```

| input / output | datatype | dims (batch first, -1 = any) |
|---|---|---|
{_tensor_lines(export.inputs)}
{_tensor_lines(export.outputs)}

Sequences longer than {export.seq} tokens are refused by the graph. Dynamic batching groups requests of the
same length only.
{op_note}
## Triton on this machine

```bash
docker run --rm {"--gpus all " if gpu else ""}-p 8000:8000 -p 8001:8001 -p 8002:8002 \\
  -v "$PWD/{repo_name}:{CONTAINER_REPOSITORY}" {TRITON_IMAGE} \\
  {start}
curl -s localhost:8000/v2/health/ready && curl -s localhost:8000/v2/models/{name}
```

(any Triton release whose ONNX Runtime loads IR version {graph.get("ir_version", "?")} works{
" and the op library" if op_library else ""}: change the tag.)
A client (`pip install tritonclient[http]`); the same code works against `lsg-export serve`:

```python
import numpy as np
from tritonclient.http import InferenceServerClient, InferInput

client = InferenceServerClient("localhost:8000")
inputs = []
{feeds}
result = client.infer("{name}", inputs)
print(result.as_numpy("{export.outputs[0].name}").shape)
```

Here `{first.name}` has shape {example_shape}: batch 1, 5 tokens; real ids come from the tokenizer files of the
export folder{f" (or send text to `{text_model}`, below)" if text_model else ""}.
{_text_section(export, name, text_model)}
## KServe

Copy this folder into the volume that `storageUri` in `{manifest}` names (the PVC `lsg-models`, so that
`lsg-models/{repo_name}/{name}/config.pbtxt` exists), or upload it to object storage and point `storageUri` at it
(`s3://bucket/{repo_name}`, `gs://...`); KServe mounts it at `{CONTAINER_REPOSITORY}` for Triton. Then:

```bash
kubectl apply -f {manifest}
kubectl get inferenceservice {name}            # READY True, and its URL
curl -s -H "Host: $(kubectl get inferenceservice {name} -o jsonpath='{{.status.url}}' | cut -d/ -f3)" \\
  "http://$INGRESS_HOST:$INGRESS_PORT/v2/models/{name}"
```

Replicas scale between `minReplicas` and `maxReplicas` on concurrent requests (`scaleTarget` per replica);
resource requests are a starting point sized from the model: adjust them to your lengths and traffic.
"""
