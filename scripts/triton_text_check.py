"""The text ensemble of `lsg-export deploy` in a real tritonserver (the one the nvidia-pytriton wheel bundles, with
Triton's python backend; it has no onnxruntime backend, so the graph model runs on a python-backend stand-in
that calls onnxruntime on the same model.onnx with the same config otherwise: name, inputs, outputs, batching).

Checks: the ensemble `<name>-text` answers `text` with the logits that ONNX Runtime gives on the ids of
`lsg-export serve`'s tokenizer (text_tokens), ids still go to `<name>` directly, and an over-long text is refused
with the tokenizer's one line while the server keeps serving.

    python scripts/triton_text_check.py EXPORT [--tritonserver PATH]
(PATH default: $TRITONSERVER, else `tritonserver` on PATH, else the one of nvidia-pytriton in /work/venvs/pytriton).
Exit 0 = all held. With nvidia-pytriton 0.x's tritonserver 2.51 and numpy 2 the python-backend stub crashes reading
the BYTES input (deserialize_bytes_tensor reads a wrong length): see docs/deployment.md, "How it is tested".
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTRITON = Path("/work/venvs/pytriton/lib/python3.11/site-packages/pytriton/tritonserver")
STAND_IN = '''import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from pathlib import Path


class TritonPythonModel:
    def initialize(self, args):
        self.session = ort.InferenceSession(str(Path(args["model_repository"]) / args["model_version"] / "model.onnx"),
                                            providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {i.name: pb_utils.get_input_tensor_by_name(request, i.name).as_numpy()
                     for i in self.session.get_inputs()}
            names = [o.name for o in self.session.get_outputs()]
            outputs = self.session.run(names, feeds)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in zip(names, outputs)]))
        return responses
'''


def backends(folder, server):
    """The server's backend folder; for nvidia-pytriton's, a copy holding the python backend with the stub for
    this Python (the wheel keeps one stub per Python version aside)."""
    stubs = server.parent.parent / "python_backend_stubs"
    if not stubs.is_dir():
        return server.parent.parent / "backends"
    python = folder / "python"
    python.mkdir(parents=True)
    for file in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(server.parent.parent / "backends" / "python" / file, python / file)
    shutil.copy2(stubs / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub",
                 python / "triton_python_backend_stub")
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("--tritonserver", default=os.environ.get("TRITONSERVER") or shutil.which("tritonserver")
                        or str(PYTRITON / "bin" / "tritonserver"))
    parser.add_argument("--port", type=int, default=18700)
    args = parser.parse_args()
    import numpy as np
    import onnxruntime as ort
    from tritonclient.http import InferenceServerClient, InferInput
    from tritonclient.utils import InferenceServerException

    from lsg_export.deploy.folder import open_export
    from lsg_export.deploy.repository import deploy
    from lsg_export.deploy.text_tokens import encode, load_tokenizer

    server = Path(args.tritonserver)
    if not server.is_file():
        raise SystemExit(f"error: no tritonserver at {server} (pip install nvidia-pytriton, or --tritonserver)")
    work = Path(tempfile.mkdtemp(prefix="lsg-triton-"))
    result = deploy(args.export, work / "repo")
    name, text_model = result.name, result.text_model
    if text_model is None:
        raise SystemExit("error: the export has no tokenizer.json: no text ensemble was written")
    graph_dir = work / "repo" / name
    (graph_dir / "1" / "model.py").write_text(STAND_IN)
    config = (graph_dir / "config.pbtxt").read_text().replace('backend: "onnxruntime"', 'backend: "python"')
    (graph_dir / "config.pbtxt").write_text(config)
    backend_dir = backends(work / "backends", server)
    env = dict(os.environ)
    wheel_libs = server.parents[3] / "nvidia_pytriton.libs"
    if wheel_libs.is_dir():
        # nvidia-pytriton's tritonserver: its python-backend stub embeds the Python whose libpython it finds (this
        # one's, first on the library path; it ignores PYTHONPATH) and needs the wheel's own libcudart. The
        # python-backend models import numpy, tokenizers and onnxruntime from this Python.
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(Path(sys.base_prefix) / "lib"), str(wheel_libs),
                                                  os.environ.get("LD_LIBRARY_PATH", "")])
    log = open(work / "tritonserver.log", "w")
    process = subprocess.Popen([str(server), f"--model-repository={work / 'repo'}",
                                f"--backend-directory={backend_dir}",
                                f"--http-port={args.port}", f"--grpc-port={args.port + 1}",
                                f"--metrics-port={args.port + 2}", "--allow-metrics=false", "--log-verbose=0"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    failures = []
    try:
        client = InferenceServerClient(f"127.0.0.1:{args.port}")
        deadline = time.time() + 180
        while time.time() < deadline and process.poll() is None:
            try:
                if client.is_server_ready():
                    break
            except Exception:  # not listening yet
                pass
            time.sleep(1)
        else:
            raise SystemExit(f"error: tritonserver did not become ready; log: {work / 'tritonserver.log'}")
        folder = open_export(args.export)
        session = ort.InferenceSession(str(folder.model_file), providers=["CPUExecutionProvider"])
        tokenizer = load_tokenizer(folder.path)
        names = [i.name for i in session.get_inputs()]
        texts = ["w1 w2 w3", "w4 " * 30, "w5 w6"]

        def text_input(values):
            tensor = InferInput("text", [len(values)], "BYTES")
            tensor.set_data_from_numpy(np.array([t.encode() for t in values], dtype=np.object_))
            return tensor

        got = client.infer(text_model, [text_input(texts)]).as_numpy("logits")
        feeds = encode(tokenizer, texts, folder.seq, names)
        want = session.run(["logits"], feeds)[0]
        diff = float(np.max(np.abs(got - want)))
        print(f"{text_model}: text -> logits {got.shape}, max abs diff to ONNX Runtime on serve's ids {diff:.2e}")
        if got.shape != want.shape or diff > 1e-5:
            failures.append(f"text logits differ ({diff})")
        ids = []
        for key, array in feeds.items():
            tensor = InferInput(key, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            ids.append(tensor)
        direct = client.infer(name, ids).as_numpy("logits")
        print(f"{name}: ids -> logits, same as the ensemble: {np.array_equal(direct, got)}")
        if not np.array_equal(direct, got):
            failures.append("ids and text answers differ")
        try:
            client.infer(text_model, [text_input(["w1", "w7 " * 70])])
            failures.append("an over-long text was answered")
        except InferenceServerException as error:
            print(f"over-long text: status {error.status()}: {error.message()}")
            if "text 1 is 72 tokens long, longer than 64" not in error.message():
                failures.append(f"unexpected refusal: {error.message()}")
        again = client.infer(text_model, [text_input(texts[:1])]).as_numpy("logits")
        if not np.allclose(again, want[:1], atol=1e-5):
            failures.append("the server answered wrongly after a refused request")
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
    if failures:
        raise SystemExit(f"error: {'; '.join(failures)} (log: {work / 'tritonserver.log'})")
    shutil.rmtree(work, ignore_errors=True)
    print("the Triton text ensemble held")


if __name__ == "__main__":
    main()
