"""Run the summariser repository `lsg-export deploy` writes in a real Triton server and check its answers.

    python scripts/triton_summariser.py EXPORT [--venv /work/venvs/pytriton] [--keep DIR]

EXPORT: an encoder-decoder export folder with its tokenizer.json. The tritonserver is the one the
`nvidia-pytriton` wheel bundles (pip install nvidia-pytriton tokenizers onnxruntime into VENV): it has the python
backend only, so the graph models run as python-backend stand-ins that call ONNX Runtime on the same graph files
(the deployed onnxruntime-backend config.pbtxt files are checked by tests/test_summarise.py); the summariser model
(model.py + decoding.py, BLS requests to the graph models) runs as deployed. Checks: the generate extension
(greedy and beam search, one text and a batch) and v2 infer with a `text` input answer what `lsg-export serve`'s
model answers in this process, a bad request gets a 400 and the next good one is right. Loopback only; exit code 0
when every check passes. Needs the `serve` extra in this Python.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

STAND_IN = '''"""Stand-in for the onnxruntime backend (absent from the pytriton wheel): the graph on ONNX Runtime."""
import json
from pathlib import Path

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        file = json.loads(args["model_config"])["parameters"]["onnx_file"]["string_value"]
        self.session = ort.InferenceSession(str(Path(__file__).parent / file), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            names = request.requested_output_names() or [o.name for o in self.session.get_outputs()]
            outputs = self.session.run(names, feeds)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in zip(names, outputs)]))
        return responses
'''


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(port, path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read().decode() or "{}")


def stand_in_repository(repo, out):
    """A copy of the deployed repository whose onnxruntime-backend models run as python-backend stand-ins."""
    from lsg_export.deploy import triton
    shutil.copytree(repo, out)
    for config_file in out.glob("*/config.pbtxt"):
        config = triton.parse(config_file.read_text())
        if config.backend == "onnxruntime":
            config.backend = "python"
            config.parameters["onnx_file"].string_value = config.default_model_filename or "model.onnx"  # its default
            config.ClearField("default_model_filename")
            (config_file.parent / "1" / "model.py").write_text(STAND_IN)
            config_file.write_text(triton.to_text(config))
    return out


def start_triton(venv, repo, http, grpc, metrics, log):
    site = next(Path(venv).glob("lib/python3*/site-packages"))
    server = site / "pytriton" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    backends = Path(log).parent / "backends"
    shutil.copytree(server / "backends", backends, dirs_exist_ok=True)
    shutil.copy2(server / "python_backend_stubs" / version / "triton_python_backend_stub", backends / "python")
    libs = site / "nvidia_pytriton.libs"
    # the python backend's stub takes its Python (and site-packages) from the first python3 on PATH, as pytriton sets
    env = dict(os.environ, PATH=f"{Path(venv) / 'bin'}:{os.environ['PATH']}", OMP_NUM_THREADS="1",
               LD_LIBRARY_PATH=f"{libs}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    command = [str(server / "bin" / "tritonserver"), f"--model-repository={repo}", f"--backend-directory={backends}",
               "--http-address=127.0.0.1", f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
               "--allow-metrics=false", f"--metrics-port={metrics}", "--log-verbose=0"]
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_ready(process, http, log, seconds=180):
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            print(Path(log).read_text()[-3000:])
            sys.exit("error: tritonserver did not become ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("--venv", default="/work/venvs/pytriton")
    parser.add_argument("--keep", help="keep the repository and Triton's log in this folder")
    args = parser.parse_args()

    from lsg_export.deploy import deploy
    from lsg_export.deploy.server import make_model

    work = Path(args.keep or tempfile.mkdtemp(prefix="triton-summariser-"))
    work.mkdir(parents=True, exist_ok=True)
    result = deploy(args.export, work / "repo", name="summariser", force=True)
    repo = stand_in_repository(result.path, work / "triton-repo")
    model = make_model(args.export, "summariser")
    http = free_port()
    process = start_triton(args.venv, repo, http, free_port(), free_port(), work / "triton.log")
    failures = []
    try:
        wait_ready(process, http, work / "triton.log")
        texts = ["w3 w9 w27 w81 w4 w16", "w5 w6 w7 w8", " ".join(f"w{i}" for i in range(1, 40))]
        checks = 0
        for parameters in ({}, {"num_beams": 1}, {"num_beams": 4, "max_new_tokens": 10}):
            expected = model.summarise(texts, parameters)
            for i, text in enumerate(texts):
                status, answer = post(http, "/v2/models/summariser/generate",
                                      {"text_input": text, "parameters": parameters})
                checks += 1
                if status != 200 or answer.get("text_output") != expected[i]:
                    failures.append(f"generate {parameters} text {i}: {status} {answer} != {expected[i]!r}")
            body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": texts}]}
            body.update({"inputs": body["inputs"] + [{"name": k, "datatype": "INT32", "shape": [1], "data": [v]}
                                                     for k, v in parameters.items()]})
            status, answer = post(http, "/v2/models/summariser/infer", body)
            checks += 1
            got = answer.get("outputs", [{}])[0].get("data") if status == 200 else answer
            if got != expected:
                failures.append(f"infer {parameters}: {status} {got} != {expected}")
        status, answer = post(http, "/v2/models/summariser/generate", {"text_input": "w1", "parameters":
                                                                       {"num_beams": 0}})
        checks += 1
        if status != 400 or "num_beams must be an integer >= 1" not in answer.get("error", ""):
            failures.append(f"num_beams 0: {status} {answer}")
        status, answer = post(http, "/v2/models/summariser/generate", {"text_input": texts[0]})
        checks += 1
        if status != 200 or answer.get("text_output") != model.summarise(texts[:1])[0]:
            failures.append(f"after the bad request: {status} {answer}")
    finally:
        process.terminate()
        process.wait(30)
    for failure in failures:
        print("FAILED", failure)
    print(f"{checks - len(failures)}/{checks} checks passed against tritonserver ({work})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
