"""Converted checkpoints across transformers versions: the same outputs, generate() tokens, no warnings.

    python benchmarks/compare_transformers.py prepare DIR [DIR_A]  # tiny checkpoints (or DIR_A's), every head converted
    python benchmarks/compare_transformers.py run DIR OUT.pt     # each head loaded with its Auto class (remote code)
    python benchmarks/compare_transformers.py weights DIR_A DIR_B  # converted weights of two `prepare` runs
    python benchmarks/compare_transformers.py compare A.pt B.pt  # max abs diff per head, tokens equal, warnings

Run `prepare` with one transformers, `run` with each (e.g. the main Python's 4.57 and a venv's 5.x), then
`compare`. `run` counts Python warnings and transformers log records (WARNING and above) while loading and
running, and everything written to stderr. Uses the tiny random checkpoints of the test suite (tests/)."""
import io
import json
import logging
import sys
import warnings
from contextlib import redirect_stderr
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SEQ2SEQ_LENGTH = 1024  # tokens of the generation input (2 rows, the second padded)


def prepare(folder, originals=None):
    sys.path.insert(0, str(ROOT / "tests"))
    import test_families as enc
    import test_seq2seq as s2s
    from conftest import save_tiny_checkpoint
    from lsg_export.families import ALL_FAMILIES, AUTO_CLASSES
    folder = Path(folder)
    jobs = {}
    for model_type, family in ALL_FAMILIES.items():
        checkpoint = (Path(originals) / "original" / model_type if originals else
                      save_tiny_checkpoint(model_type, folder / "original" / model_type))
        tests = s2s if family.seq2seq else enc
        for head in family.heads:
            out = folder / model_type / head
            tests.convert_tiny(checkpoint, out, model_type, head, **(dict(max_sequence_length=SEQ2SEQ_LENGTH)
                                                                     if family.seq2seq else {}))
            jobs[f"{model_type}/{head}"] = {"auto_class": AUTO_CLASSES[head], "folder": str(out),
                                            "inputs": tests.head_inputs(model_type, head)}
        if family.seq2seq:
            ids, mask = s2s.batch(model_type, SEQ2SEQ_LENGTH, SEQ2SEQ_LENGTH * 3 // 4, seed=3)
            for name, beams in (("greedy", 1), ("beam", 3)):
                jobs[f"{model_type}/generate-{name}"] = {
                    "auto_class": "AutoModelForSeq2SeqLM", "folder": str(folder / model_type / family.default_head),
                    "inputs": {"input_ids": ids, "attention_mask": mask},
                    "generate": dict(s2s.GENERATE, num_beams=beams)}
    torch.save(jobs, folder / "jobs.pt")
    print(f"{len(jobs)} jobs in {folder / 'jobs.pt'}")


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def run(folder, out):
    import transformers
    jobs = torch.load(Path(folder) / "jobs.pt")
    handler = Records()
    logging.getLogger("transformers").addHandler(handler)
    results = {"transformers": transformers.__version__, "heads": {}}
    stderr = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, redirect_stderr(stderr):
        warnings.simplefilter("always")
        for name, job in jobs.items():
            model = getattr(transformers, job["auto_class"]).from_pretrained(job["folder"], trust_remote_code=True)
            model.eval()
            with torch.no_grad():
                if "generate" in job:
                    outputs = [model.generate(**job["inputs"], **job["generate"])]
                else:
                    outputs = [x for x in model(**job["inputs"], return_dict=True).to_tuple()
                               if isinstance(x, torch.Tensor)]
            results["heads"][name] = {"class": type(model).__name__, "outputs": outputs}
    results["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    results["log_records"] = handler.messages
    results["stderr"] = stderr.getvalue()
    torch.save(results, out)
    print(f"transformers {transformers.__version__}: {len(jobs)} jobs, {len(caught)} Python warnings, "
          f"{len(handler.messages)} log records, {len(stderr.getvalue())} stderr characters")


def weights(folder_a, folder_b):
    from safetensors.torch import load_file
    worst = 0.0
    for path in sorted(Path(folder_a).glob("*/*/model.safetensors")):
        if path.parts[-3] == "original":
            continue
        a, b = load_file(str(path)), load_file(str(Path(folder_b) / path.relative_to(folder_a)))
        assert a.keys() == b.keys(), path
        diff = max(float((a[k].float() - b[k].float()).abs().max()) if a[k].numel() else 0.0 for k in a)
        worst = max(worst, diff)
        if diff:
            print(f"{path.relative_to(folder_a)}: max abs diff {diff:.3g}")
    print(f"converted weights: max abs diff {worst:.3g} over every family and head")


def compare(path_a, path_b):
    a, b = torch.load(path_a), torch.load(path_b)
    print(f"{'head':<44} {'class':<44} max abs diff ({a['transformers']} vs {b['transformers']})")
    worst = 0.0
    for name, got_a in a["heads"].items():
        got_b = b["heads"][name]
        assert got_a["class"] == got_b["class"] and len(got_a["outputs"]) == len(got_b["outputs"]) > 0, name
        if name.split("/")[1].startswith("generate"):
            same = all(torch.equal(x, y) for x, y in zip(got_a["outputs"], got_b["outputs"]))
            print(f"{name:<44} {got_a['class']:<44} tokens {'equal' if same else 'DIFFER'} "
                  f"{tuple(got_a['outputs'][0].shape)}")
            worst = worst if same else float("inf")
            continue
        diff = max(float((x - y).abs().max()) for x, y in zip(got_a["outputs"], got_b["outputs"]))
        worst = max(worst, diff)
        print(f"{name:<44} {got_a['class']:<44} {diff:.3g}")
    for result in (a, b):
        print(f"transformers {result['transformers']}: {len(result['warnings'])} Python warnings, "
              f"{len(result['log_records'])} log records, {len(result['stderr'])} stderr characters",
              json.dumps(result["warnings"][:3] + result["log_records"][:3]) if result["warnings"] or
              result["log_records"] else "")
    print(f"worst max abs diff: {worst:.3g}")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"prepare": prepare, "run": run, "weights": weights, "compare": compare}[command](*args)
