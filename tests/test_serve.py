"""`lsg-export serve` against a real server on loopback (random free ports, a subprocess): answers equal
a direct ONNX Runtime run over HTTP and gRPC (tritonclient), raw text, a bounded concurrent load,
every bad request a 4xx with a clear message while the server keeps serving, health / readiness,
the model's pickling for `--workers`, and a clean shutdown on SIGTERM.

tritonclient.grpc and kserve cannot share a process (both register the inference protocol's protobuf
messages: kserve/kserve#3099), so the gRPC client runs in a child process."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import _deploy_cases as cases
import numpy as np
import pytest

pytest.importorskip("kserve")
httpclient = pytest.importorskip("tritonclient.http")

NAME = "tiny"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, export, log, *extra):
        self.port, self.grpc_port = free_port(), free_port()
        self.log = log
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lsg_export.cli", "serve", str(export), "--name", NAME, "--port", str(self.port),
                 "--grpc-port", str(self.grpc_port), *extra], stdout=out, stderr=subprocess.STDOUT, env=env)
        self.url = f"127.0.0.1:{self.port}"
        self.client = httpclient.InferenceServerClient(self.url)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server died:\n{self.tail()}"
            try:
                if self.client.is_server_ready():
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"the server did not become ready in 90 s:\n{self.tail()}")

    def tail(self, lines=30):
        return "\n".join(Path(self.log).read_text().splitlines()[-lines:])

    def stop(self, timeout=30):
        """SIGTERM; returns (exit code, seconds to exit)."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        return code, time.monotonic() - started


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return cases.tiny_export(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(export, tmp_path_factory):
    server = Server(export, tmp_path_factory.mktemp("serve") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def session(export):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(export / "model.onnx"), options, providers=["CPUExecutionProvider"])


def token_inputs(batch, length, seed):
    """Random ids; rows after the first are padded to shorter lengths."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 100, (batch, length), dtype=np.int64)
    mask = np.ones_like(ids)
    for row in range(1, batch):
        real = max(1, length * (batch - row) // batch)
        ids[row, real:], mask[row, real:] = 0, 0
    types = np.zeros_like(ids)
    types[:, length // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def http_infer(client, feeds, binary=True):
    inputs = []
    for name, array in feeds.items():
        inputs.append(httpclient.InferInput(name, list(array.shape), "INT64"))
        inputs[-1].set_data_from_numpy(array, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
    return client.infer(NAME, inputs, outputs=outputs).as_numpy("logits")


def post(server, body, model=NAME):
    """Raw POST to the v2 infer URL: (status, parsed JSON or text)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{server.url}/v2/models/{model}/infer", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, text


def tensor(name, array, datatype="INT64"):
    array = np.asarray(array)
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.reshape(-1).tolist()}


@pytest.mark.quick
def test_health_and_metadata(server):
    client = server.client
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    assert not client.is_model_ready("other")
    metadata = client.get_model_metadata(NAME)
    assert metadata["name"] == NAME
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == \
        [(n, "INT64", [-1, -1]) for n in INPUTS] + [("text", "BYTES", [-1])]
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [("logits", "FP32", [-1, 2])]


@pytest.mark.quick
@pytest.mark.parametrize("batch,length", [(1, 1), (2, 9), (3, 40), (2, cases.SEQ)])
def test_http_answers_equal_onnx_runtime(server, session, batch, length):
    feeds = token_inputs(batch, length, seed=length)
    expected = session.run(["logits"], feeds)[0]
    for binary in (True, False):  # binary tensors and JSON data
        got = http_infer(server.client, feeds, binary)
        assert got.dtype == np.float32 and got.shape == expected.shape == (batch, 2)
        assert np.abs(got - expected).max() <= 1e-6, (binary, got, expected)


def test_raw_text(server, session, export):
    from transformers import AutoTokenizer
    texts = cases.texts(3, seed=1) + ["W1 w2, w3!"]
    tokens = AutoTokenizer.from_pretrained(str(export))(texts, padding=True, return_tensors="np")
    expected = session.run(["logits"], {name: tokens[name].astype(np.int64) for name in INPUTS})[0]
    text = httpclient.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    got = server.client.infer(NAME, [text]).as_numpy("logits")
    assert np.abs(got - expected).max() <= 1e-6
    status, body = post(server, {"inputs": [tensor("text", np.array(texts[:2], dtype=object), "BYTES")]})
    assert status == 200 and np.abs(np.array(body["outputs"][0]["data"]).reshape(2, 2) - expected[:2]).max() <= 1e-6
    long_text = " ".join(["w7"] * 70)
    status, body = post(server, {"inputs": [tensor("text", np.array(["w1", long_text], dtype=object), "BYTES")]})
    assert status == 400
    assert body["error"] == "text 1 is 72 tokens long, longer than 64, the longest this export accepts"


def bad_requests():
    """(request body or raw bytes, model name, expected status, fragment of the message)."""
    good = token_inputs(1, 5, seed=3)
    inputs = [tensor(n, a) for n, a in good.items()]
    short_mask = [inputs[0], tensor("attention_mask", np.ones((1, 4), np.int64)), inputs[2]]
    too_long = [tensor(n, np.ones((1, cases.SEQ + 1), np.int64) * (5 if n == "input_ids" else 0)) for n in INPUTS]
    return [
        ({"inputs": inputs}, "other", 404, "Model with name other does not exist"),
        ({"inputs": [dict(inputs[0], name="ids")] + inputs[1:]}, NAME, 400, "unknown input 'ids'"),
        ({"inputs": [dict(inputs[0], datatype="INT32")] + inputs[1:]}, NAME, 400,
         "input_ids has datatype INT32, expected INT64"),
        ({"inputs": [dict(inputs[0], shape=[5])] + inputs[1:]}, NAME, 400, "expected rank 2"),
        ({"inputs": too_long}, NAME, 400, "sequence length 65 is longer than 64"),
        ({"inputs": short_mask}, NAME, 400, "inputs of different shapes"),
        ({"inputs": [dict(t, shape=[0, 5], data=[]) for t in inputs]}, NAME, 400, "empty input"),
        ({"inputs": inputs[:1]}, NAME, 400, "missing input attention_mask, token_type_ids"),
        ({"inputs": [dict(inputs[0], data=[5, 6, 7])] + inputs[1:]}, NAME, 400, "does not fit shape [1, 5]"),
        ({"inputs": [dict(inputs[0], data=[5, 6, 7, 8, 100])] + inputs[1:]}, NAME, 400,
         "input_ids has values outside 0..99"),
        ({"inputs": inputs, "outputs": [{"name": "pooled"}]}, NAME, 400, "unknown output pooled"),
        ({"inputs": []}, NAME, 400, "no inputs"),
        (b'{"inputs": [{"name": "input_ids",', NAME, 422, "JSON decode error"),
    ]


@pytest.mark.quick
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, session):
    feeds = token_inputs(1, 5, seed=3)
    expected = session.run(["logits"], feeds)[0]
    for body, model, code, fragment in bad_requests():
        status, answer = post(server, body, model)
        assert status == code, (fragment, status, answer)
        assert fragment in json.dumps(answer), (fragment, answer)
        assert np.abs(http_infer(server.client, feeds) - expected).max() <= 1e-6  # still serving
    assert server.process.poll() is None


GRPC_CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

url, name, cases_file, out_file = sys.argv[1:]
client = grpcclient.InferenceServerClient(url)
report = {"live": client.is_server_live(), "ready": client.is_server_ready(),
          "model_ready": client.is_model_ready(name)}
metadata = client.get_model_metadata(name, as_json=True)
report["inputs"] = [i["name"] for i in metadata["inputs"]]
data = np.load(cases_file, allow_pickle=True)
outputs = {}

def infer(feeds):
    inputs = []
    for key, array in feeds.items():
        inputs.append(grpcclient.InferInput(key, list(array.shape), np_to_triton_dtype(array.dtype)))
        inputs[-1].set_data_from_numpy(array)
    return client.infer(name, inputs).as_numpy("logits")

for case in sorted({k.split("/")[0] for k in data.files}):
    feeds = {k.split("/")[1]: data[k] for k in data.files if k.startswith(case + "/")}
    outputs[case] = infer(feeds)
errors = []
good = {k.split("/")[1]: data[k] for k in data.files if k.startswith("c0/")}
bad = [dict(good, input_ids=good["input_ids"].astype(np.int32)), {"ids": good["input_ids"]},
       {k: np.concatenate([v] * 20, axis=1) for k, v in good.items()}]
for feeds in bad:
    try:
        infer(feeds)
        errors.append(["no error", ""])
    except InferenceServerException as error:
        errors.append([error.status(), error.message()])
try:
    client.infer("other", [])
except InferenceServerException as error:
    errors.append([error.status(), error.message()])
outputs["after"] = infer(good)
report["errors"] = errors
np.savez(out_file, **outputs)
print(json.dumps(report))
"""


def test_grpc_answers_equal_onnx_runtime(server, session, tmp_path):
    feeds = {"c0": token_inputs(2, 9, seed=5), "c1": token_inputs(3, cases.SEQ, seed=6),
             "c2": {"text": np.array([t.encode() for t in cases.texts(2, seed=7)], dtype=np.object_)}}
    np.savez(tmp_path / "cases.npz", **{f"{c}/{k}": v for c, f in feeds.items() for k, v in f.items()})
    done = subprocess.run([sys.executable, "-c", GRPC_CLIENT, f"127.0.0.1:{server.grpc_port}", NAME,
                           tmp_path / "cases.npz", tmp_path / "out.npz"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["live"] and report["ready"] and report["model_ready"]
    assert report["inputs"] == list(INPUTS) + ["text"]
    got = np.load(tmp_path / "out.npz")
    for case in ("c0", "c1"):
        assert np.abs(got[case] - session.run(["logits"], feeds[case])[0]).max() <= 1e-6
    assert got["c2"].shape == (2, 2) and np.isfinite(got["c2"]).all()
    assert np.abs(got["after"] - session.run(["logits"], feeds["c0"])[0]).max() <= 1e-6
    statuses = [status for status, _ in report["errors"]]
    assert statuses == ["StatusCode.INVALID_ARGUMENT"] * 3 + ["StatusCode.NOT_FOUND"], report["errors"]
    messages = [message for _, message in report["errors"]]
    assert "input_ids has datatype INT32, expected INT64" in messages[0]
    assert "unknown input 'ids'" in messages[1]
    assert "sequence length 180 is longer than 64" in messages[2]


def test_concurrent_load(server, session, record_property):
    """8 clients x 50 requests of mixed batch sizes and lengths: no error, no wrong answer."""
    clients, per_client = 8, 50
    requests = [[token_inputs(1 + (i + c) % 3, 1 + (7 * i + 13 * c) % cases.SEQ, seed=1000 * c + i)
                 for i in range(per_client)] for c in range(clients)]
    latencies, failures = [], []

    def work(c):
        client = httpclient.InferenceServerClient(server.url)
        for feeds in requests[c]:
            started = time.perf_counter()
            try:
                got = http_infer(client, feeds)
            except Exception as error:  # counted below
                failures.append(repr(error))
                continue
            latencies.append(time.perf_counter() - started)
            expected = session.run(["logits"], feeds)[0]
            if got.shape != expected.shape or np.abs(got - expected).max() > 1e-6:
                failures.append(f"wrong answer at {feeds['input_ids'].shape}")

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    assert not failures, failures[:5]
    assert len(latencies) == clients * per_client
    p50, p99 = (float(x) for x in np.percentile(latencies, [50, 99]) * 1000)  # plain floats: xdist sends them
    record_property("load", {"requests": len(latencies), "p50_ms": round(p50, 1), "p99_ms": round(p99, 1),
                             "wall_s": round(wall, 2)})
    print(f"\nload: {len(latencies)} requests from {clients} clients in {wall:.1f} s, "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")


def test_embeddings_need_a_sentence_embedding_output(server):
    """The classifier export has no pooled output: /v1/embeddings says so in one line, /v1/models lists it."""
    request = urllib.request.Request(f"http://{server.url}/v1/embeddings", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": NAME, "input": "w1"}).encode())
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30)
    assert raised.value.code == 400
    assert json.loads(raised.value.read())["error"]["message"] == (
        f"model {NAME} has no sentence_embedding output: export it with `lsg-export onnx --pooling mean|cls|max` "
        "to serve embeddings")
    with urllib.request.urlopen(f"http://{server.url}/v1/models", timeout=30) as response:
        models = json.loads(response.read())
    assert models["object"] == "list" and [(m["id"], m["max_model_len"]) for m in models["data"]] == [(NAME, cases.SEQ)]


def test_port_in_use_is_one_line(server, export):
    from click.testing import CliRunner

    from lsg_export.cli import main
    result = CliRunner().invoke(main, ["serve", str(export), "--port", str(server.port), "--grpc-port",
                                       str(free_port())])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{server.port} (HTTP)")


def test_model_pickles_for_workers(export, session):
    """--workers processes receive the model pickled (spawn): the session is re-created there, at first use."""
    import pickle

    from kserve.protocol.infer_type import InferInput, InferRequest

    from lsg_export.deploy.server import make_model
    model = pickle.loads(pickle.dumps(make_model(export, NAME)))
    assert model._session is None and model.has_text
    feeds = token_inputs(2, 20, seed=9)
    inputs = []
    for name, array in feeds.items():
        inputs.append(InferInput(name, list(array.shape), "INT64"))
        inputs[-1].set_data_from_numpy(array, binary_data=False)
    got = model.run(InferRequest(NAME, inputs))["logits"]
    assert np.abs(got - session.run(["logits"], feeds)[0]).max() <= 1e-6


def test_clean_shutdown(server):
    code, seconds = server.stop()
    assert code == 0, server.tail()
    assert seconds < 20
    assert "Traceback" not in Path(server.log).read_text().split("Stopping the model server")[-1]
    for port in (server.port, server.grpc_port):  # both ports are released
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))

