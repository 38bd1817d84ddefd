"""Deployment of an export folder: a Triton model repository + KServe manifest, and a local v2 server.

    from lsg_export.deploy import deploy
    result = deploy("minilm-onnx", "triton-repo", max_batch_size=8)   # result.path, result.files

    from lsg_export.deploy.server import make_model, serve          # imports kserve
    serve(make_model("minilm-onnx"), port=8080, grpc_port=8081)

Modules: folder (check and read an export: the graph's inputs / outputs), triton (config.pbtxt as
Triton's ModelConfig message), kserve (the InferenceService manifest from the KServe SDK's models),
readme (REPO/README.md), repository (deploy), server (the kserve.Model running ONNX Runtime), cli;
embeddings (sentence embeddings batched by a token budget), openai_api (/v1/embeddings, /v1/models),
http_limits (413 / 429 and Prometheus metrics); for encoder-decoder exports (summarisers): seq2seq_export
(check and read one), decoding (the numpy decoding loop and the tokenizer, shared by serve and the Triton python
model), summariser (serve's model), generate_route (the generate extension), summariser_repository (deploy),
triton_model (the Triton model.py).
Needs the `serve` extra: pip install 'lsg-export[serve]'.
"""
from .folder import ExportFolder, TensorSpec, open_export
from .repository import DeployResult, deploy

__all__ = ["deploy", "DeployResult", "open_export", "ExportFolder", "TensorSpec"]
