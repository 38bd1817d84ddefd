"""export.json: the library versions of an export, its validation history, written atomically."""
import json
import os
import time

HISTORY = 50  # validation runs kept in export.json's "validations" (the oldest dropped first)


def versions():
    import importlib.metadata as metadata
    found = {}
    for name in ("lsg-export", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript",
                 "optimum", "optimum-onnx"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def record_validation(meta, report, run):
    """Store a validation in export.json's data: `validation` is the latest run (what deploy and serve gate
    on), `validations` the history, each with when it ran, which command (`run`) and its inputs."""
    entry = {"run": run, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **report.to_dict()}
    history = [*meta.get("validations", []), {k: v for k, v in entry.items() if k != "rows"}]
    meta["validation"], meta["validations"] = entry, history[-HISTORY:]
    return meta


def write_json(path, data):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
