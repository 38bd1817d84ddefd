"""The text ensemble of `lsg-export deploy` in a real tritonserver (the one the nvidia-pytriton wheel bundles, with
Triton's python backend; it has no onnxruntime backend, so the graph model runs on a python-backend stand-in
that calls onnxruntime on the same model.onnx with the same config otherwise: name, inputs, outputs, batching).

Checks: the ensemble `<name>-text` answers `text` with the logits that ONNX Runtime gives on the ids of
`lsg-export serve`'s tokenizer (text_tokens), ids still go to `<name>` directly, and an over-long text is refused
with the tokenizer's one line while the server keeps serving.

    python scripts/triton_text_check.py EXPORT [--venv /work/venvs/pytriton] [--keep DIR]

VENV: `pip install nvidia-pytriton tokenizers onnxruntime "numpy<2"` (the python backend's stub runs the
python-backend models with the first python3 on PATH, VENV's here; the stub of nvidia-pytriton's Triton 2.51
misreads BYTES tensors under numpy 2). Exit 0 = all held. Needs the `serve` extra in this Python.
"""
import argparse
import shutil
import tempfile
from pathlib import Path

from triton_summariser import free_port, stand_in_repository, start_triton, wait_ready


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("--venv", default="/work/venvs/pytriton")
    parser.add_argument("--keep", help="keep the repository and Triton's log in this folder")
    args = parser.parse_args()
    import numpy as np
    import onnxruntime as ort
    from tritonclient.http import InferenceServerClient, InferInput
    from tritonclient.utils import InferenceServerException

    from lsg_export.deploy.folder import open_export
    from lsg_export.deploy.repository import deploy
    from lsg_export.deploy.text_tokens import encode, load_tokenizer

    work = Path(args.keep or tempfile.mkdtemp(prefix="lsg-triton-"))
    work.mkdir(parents=True, exist_ok=True)
    result = deploy(args.export, work / "repo", force=True)
    name, text_model = result.name, result.text_model
    if text_model is None:
        raise SystemExit("error: the export has no tokenizer.json: no text ensemble was written")
    repo = stand_in_repository(result.path, work / "triton-repo")
    http = free_port()
    process = start_triton(args.venv, repo, http, free_port(), free_port(), work / "triton.log")
    failures = []
    try:
        wait_ready(process, http, work / "triton.log")
        client = InferenceServerClient(f"127.0.0.1:{http}")
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
    if failures:
        raise SystemExit(f"error: {'; '.join(failures)} (log: {work / 'triton.log'})")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print("the Triton text ensemble held")


if __name__ == "__main__":
    main()
