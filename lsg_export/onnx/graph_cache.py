"""Exported graphs kept for reuse: torch.export -> ONNX is the slow step of an export (most of its time on
small models), and it does not depend on --optimize, --fp16, --quantize nor the validation. Exports of
one model that differ only in those (the bench's ort-gather, ort-gather-optimized, ort-int8, ...) take
copies of the graphs the first one exported; each then does its own steps and validation on the copy.

An entry is a folder per attention kind, device, opset and --seq, valid while its stamp.json matches:
same task and outputs (the layout's record), graph files, config.json, weights (modification time),
exporter code (a hash of lsg_export/onnx and lsg_export/modeling) and library versions. Graphs with
external data are not kept."""
import hashlib
import json
import shutil
from pathlib import Path

STAMP = "stamp.json"


def code_hash():
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*(root / "onnx").glob("*.py"), *(root / "modeling").glob("*.py")]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def weights_mtime(folder):
    return max((p.stat().st_mtime for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin")),
               default=0.0)


class GraphCache:
    def __init__(self, folder):
        self.folder = Path(folder)

    @staticmethod
    def stamp(info, graphs, files, kind, device, opset, seq):
        """graphs: what the layout says of its graphs (task, outputs, pooling...: export.json's keys)."""
        from .record import versions
        config = (Path(info.path) / "config.json").read_bytes()
        stamp = {"graphs": graphs, "files": list(files), "attention": kind.name, "device": device, "opset": opset,
                 "seq": seq, "config": hashlib.sha256(config).hexdigest()[:16],
                 "weights_mtime": weights_mtime(info.path), "code": code_hash(), "versions": versions()}
        return json.loads(json.dumps(stamp))  # as stamp.json gives it back (lists, not tuples)

    def restore(self, stamp, folder):
        """Copy the kept graphs of `stamp` into `folder`; their export records, or None when none are kept."""
        entry = self._entry_of(stamp)
        try:
            kept = json.loads((entry / STAMP).read_text())
        except (OSError, ValueError):
            return None
        if kept.get("stamp") != stamp or not all((entry / file).is_file() for file in stamp["files"]):
            return None
        for file in stamp["files"]:
            shutil.copy(entry / file, Path(folder) / file)
        return kept["records"]

    def store(self, stamp, folder, records):
        """Keep copies of the graphs just exported into `folder` (replacing an older entry)."""
        if any(record["external_data"] for record in records.values()):
            return
        entry = self._entry_of(stamp)
        shutil.rmtree(entry, ignore_errors=True)
        entry.mkdir(parents=True)
        for file in stamp["files"]:
            shutil.copy(Path(folder) / file, entry / file)
        (entry / STAMP).write_text(json.dumps({"stamp": stamp, "records": records}, indent=1) + "\n")

    def _entry_of(self, stamp):
        return self.folder / f"{stamp['attention']}-{stamp['device']}-opset{stamp['opset']}-seq{stamp['seq']}"
