"""Load figures of `lsg-export serve` as an embedding server: token-budget batching against batching off.

For each length mix (mixed: 10..4096 tokens, short: 10..512, sentences: 10..256, what MiniLM's
model_short.onnx takes) and each mode (--max-batch-tokens N, then 0),
starts `lsg-export serve EXPORT` on loopback, runs CLIENTS threads x REQUESTS requests (one text each,
lengths drawn log-uniformly from the mix, cut from GPL-3), and reports wrong answers (cosine to a direct
ONNX Runtime run of the text alone < 0.99999), errors, p50 / p99 latency and throughput. Bounded: a fixed
number of requests, closed-loop clients (each sends its next request when the last one is answered).

    python benchmarks/bench_embed_server.py minilm-onnx --json embed-server.json
    python benchmarks/bench_embed_server.py minilm-onnx --mixes short --clients 16 --requests 25

EXPORT: an `lsg-export onnx` folder with a sentence_embedding output (`--pooling`; MiniLM's by default).
"""
import argparse
import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

MIXES = {"mixed": (10, 4096), "short": (10, 512), "sentences": (10, 256)}
DOCUMENT = "/usr/share/common-licenses/GPL-3"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_texts(export, count, low, high, seed):
    """`count` texts of low..high tokens (log-uniform), each a span of GPL-3 (repeated as needed)."""
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(Path(export) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    document = Path(DOCUMENT).read_text() * 2
    offsets = tokenizer.encode(document, add_special_tokens=False).offsets
    rng = np.random.default_rng(seed)
    texts = []
    for length in np.exp(rng.uniform(np.log(low), np.log(high), count)).astype(int):
        start = int(rng.integers(0, len(offsets) - length))
        text = document[offsets[start][0]:offsets[start + max(1, length - 2) - 1][1]]
        while len(tokenizer.encode(text).ids) > high:  # a span can re-tokenize a little longer
            text = text[:int(len(text) * 0.98)]
        texts.append(text)
    return texts, [len(tokenizer.encode(t).ids) for t in texts]


def direct_embeddings(export, texts):
    """Each text run alone through ONNX Runtime (the reference)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(Path(export) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    session = ort.InferenceSession(str(Path(export) / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    out = []
    for text in texts:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        out.append(session.run(["sentence_embedding"], {n: feeds[n] for n in names})[0][0])
    return out


class Server:
    def __init__(self, export, name, log, *options):
        self.port = free_port()
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lsg_export.cli", "serve", str(export), "--name", name, "--port",
                 str(self.port), "--grpc-port", str(free_port()), *options], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"error: the server died: {Path(log).read_text()[-2000:]}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/v1/models")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise SystemExit("error: the server did not start in 120 s")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def run_load(port, name, texts, expected, clients, requests, seed):
    """Closed-loop clients; returns latencies (s), wrong answers, errors, wall seconds, tokens sent."""
    rng = np.random.default_rng(seed)
    plan = [rng.integers(0, len(texts), requests) for _ in range(clients)]
    latencies, wrong, errors, tokens = [], [], [], [0]
    lock = threading.Lock()

    def work(c):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        for index in plan[c]:
            body = json.dumps({"model": name, "input": [texts[index]], "encoding_format": "base64"})
            started = time.perf_counter()
            try:
                connection.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                answer = json.loads(response.read())
            except (OSError, http.client.HTTPException, ValueError) as error:
                errors.append(repr(error))
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                continue
            elapsed = time.perf_counter() - started
            if response.status != 200:
                errors.append(f"{response.status}: {answer}")
                continue
            got = np.frombuffer(base64.b64decode(answer["data"][0]["embedding"]), dtype="<f4").astype(np.float64)
            want = expected[index].astype(np.float64)
            cosine = got @ want / (np.linalg.norm(got) * np.linalg.norm(want))
            with lock:
                latencies.append(elapsed)
                tokens[0] += answer["usage"]["prompt_tokens"]
                if not cosine >= 0.99999:
                    wrong.append((int(index), float(cosine)))

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, wrong, errors, time.perf_counter() - started, tokens[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export")
    parser.add_argument("--mixes", default="short,mixed", help="comma-separated: " + ", ".join(MIXES))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=25, help="per client")
    parser.add_argument("--texts", type=int, default=48, help="distinct texts per mix")
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    export = Path(args.export)
    if "sentence_embedding" not in json.dumps(json.loads((export / "export.json").read_text()).get("graphs")):
        raise SystemExit(f"error: {export} has no sentence_embedding output (lsg-export onnx --pooling mean)")
    results = []
    for mix in args.mixes.split(","):
        low, high = MIXES[mix]
        texts, lengths = make_texts(export, args.texts, low, high, seed=len(mix))
        started = time.perf_counter()
        expected = direct_embeddings(export, texts)
        print(f"{mix}: {len(texts)} texts of {min(lengths)}..{max(lengths)} tokens, direct runs in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        for budget in (args.max_batch_tokens, 0):
            server = Server(export, "bench", f"/tmp/bench-embed-{os.getpid()}.log", "--max-batch-tokens", str(budget),
                            "--max-concurrent-requests", "0")
            try:
                latencies, wrong, errors, wall, tokens = run_load(server.port, "bench", texts, expected,
                                                                  args.clients, args.requests, seed=7)
            finally:
                server.stop()
            p50, p99 = (np.percentile(latencies, [50, 99]) * 1000).tolist() if latencies else (None, None)
            row = {"mix": mix, "max_batch_tokens": budget, "requests": len(latencies), "errors": len(errors),
                   "wrong": len(wrong), "p50_ms": round(p50, 1), "p99_ms": round(p99, 1), "wall_s": round(wall, 2),
                   "requests_per_s": round(len(latencies) / wall, 2), "tokens_per_s": round(tokens / wall)}
            results.append(row)
            print(json.dumps(row), flush=True)
            if errors:
                print("  errors:", errors[:3], flush=True)
    for mix in args.mixes.split(","):
        on, off = [r for r in results if r["mix"] == mix]
        print(f"{mix}: batching {on['requests_per_s']} req/s, off {off['requests_per_s']} req/s: "
              f"{on['requests_per_s'] / off['requests_per_s']:.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
