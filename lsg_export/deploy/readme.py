"""REPO/README.md: the exact commands to serve a repository with Triton and with KServe."""
from tritonclient.utils import triton_to_np_dtype

from .triton import CONTAINER_REPOSITORY

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.01-py3"


def _tensor_lines(specs):
    return "\n".join(f"| `{s.name}` | {s.datatype} | {list(s.shape)} |" for s in specs)


def _opsets(graph):
    return ", ".join(f"{domain} {version}" for domain, version in (graph.get("opsets") or {}).items()) or "?"


def _example_shape(spec):
    """Batch 1, 5 tokens (symbolic dims)."""
    return [1] + [5 if d == -1 else d for d in spec.shape[1:]]


def repository_readme(export, config, repo_name, op_library, manifest):
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
as below (KServe mounts it there). The Triton image's ONNX Runtime must be 1.29 or newer.
""" if op_library else "")
    return f"""# Triton / KServe deployment of `{name}`

Written by `lsg-export deploy` from `{export.path}` ({export.meta.get("task")}, inputs up to {export.seq} tokens,
{export.meta.get("precision", "fp32")}, ONNX IR version {graph.get("ir_version", "?")}, opsets {_opsets(graph)}).

```
{name}/config.pbtxt      Triton model configuration (onnxruntime backend, max_batch_size {config.max_batch_size})
{name}/1/model.onnx      the graph{" + its external data" if export.data_files else ""}
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
  tritonserver --model-repository={CONTAINER_REPOSITORY}
curl -s localhost:8000/v2/health/ready && curl -s localhost:8000/v2/models/{name}
```

(any Triton release whose ONNX Runtime loads IR version {graph.get("ir_version", "?")} works: change the tag.)
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
export folder.

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
