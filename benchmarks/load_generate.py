"""Load test of `lsg-export serve`'s generate endpoint: CLIENTS concurrent clients x REQUESTS requests each.

    python benchmarks/load_generate.py EXPORT [--clients 8] [--requests 20] [--json out.json]

EXPORT: an encoder-decoder export with its tokenizer.json. The script starts `lsg-export serve EXPORT` on a free
loopback port (127.0.0.1 only), computes every request's expected summary first with the same export in this
process (decoding.py on ONNX Runtime, the loop tests/test_summarise.py checks against transformers' generate),
then sends the requests (texts of 1..60 words, greedy and 2-4 beams, 4..12 new tokens) from the clients at once
and reports wrong answers (must be 0), errors, and the latency p50 / p99. Bounded: each request times out after
--timeout seconds and the whole run after --deadline; the server is stopped at the end.
"""
import argparse
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def words(folder):
    """The tokenizer's plain words (no special or sub-word tokens), to draw texts from."""
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    tokens = vocab if isinstance(vocab, dict) else dict(vocab)
    return sorted(t for t in tokens if t.isalnum())[:5000]


def make_requests(folder, clients, per_client, seed=0):
    rng = random.Random(seed)
    vocabulary = words(folder)
    requests = []
    for _ in range(clients * per_client):
        text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 60)))
        parameters = {"num_beams": rng.choice([1, 1, 2, 4]), "max_new_tokens": rng.randint(4, 12)}
        requests.append({"text_input": text, "parameters": parameters})
    return [requests[c::clients] for c in range(clients)]


def post(port, name, body, timeout):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{name}/generate",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds for the whole run")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    from pathlib import Path

    from lsg_export.deploy.server import make_model

    folder = Path(args.export)
    name = "summariser"
    batches = make_requests(folder, args.clients, args.requests)
    model = make_model(folder, name)
    started = time.perf_counter()
    expected = [[model.summarise(r["text_input"], r["parameters"])[0] for r in batch] for batch in batches]
    reference_s = time.perf_counter() - started
    port = free_port()
    log = open(folder.parent / "load-generate-server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "lsg_export.cli", "serve", str(folder), "--name", name,
                               "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(free_port())],
                              stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    latencies, wrong, errors = [], [], []
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"error: the server did not start (see {log.name})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        stop_at = time.monotonic() + args.deadline

        def client(c):
            for body, want in zip(batches[c], expected[c]):
                if time.monotonic() > stop_at:
                    errors.append("deadline")
                    return
                began = time.perf_counter()
                try:
                    answer = post(port, name, body, args.timeout)
                except Exception as error:  # counted and reported
                    errors.append(f"{type(error).__name__}: {error}")
                    continue
                latencies.append(time.perf_counter() - began)
                if answer.get("text_output") != want:
                    wrong.append((body, answer, want))

        began = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99)) if latencies else (float("nan"),) * 2
    figures = {"clients": args.clients, "requests": args.clients * args.requests, "answered": len(latencies),
               "wrong": len(wrong), "errors": len(errors), "p50_ms": round(p50, 1), "p99_ms": round(p99, 1),
               "wall_s": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 2),
               "reference_s": round(reference_s, 2)}
    print(json.dumps(figures))
    for body, answer, want in wrong[:3]:
        print("WRONG", body, answer, "expected", repr(want))
    for error in errors[:3]:
        print("ERROR", error)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    sys.exit(1 if wrong or errors else 0)


if __name__ == "__main__":
    main()
