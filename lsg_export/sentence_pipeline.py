"""The sentence-transformers pipeline of a checkpoint (modules.json: Transformer, then Pooling, Normalize ...).

convert carries its files into the LSG folder and `lsg-export onnx` into the export, with `max_seq_length`
set to the new length, so that `SentenceTransformer(FOLDER)` loads either; the export's `sentence_embedding`
output computes its Pooling (+ Normalize) by default. Light: no torch import."""
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import LSGExportError
from .sources import hub_reachable

MODULES_FILE = "modules.json"
SETTINGS_FILE = "sentence_bert_config.json"  # the Transformer module's settings: max_seq_length, do_lower_case
TOP_FILES = (MODULES_FILE, SETTINGS_FILE, "config_sentence_transformers.json")
GRAPH_MODES = ("mean", "cls", "max")  # the poolings the graph computes
# sentence-transformers' pooling config before its `pooling_mode` key: one flag per mode
FLAG_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
              "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
              "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


@dataclass(frozen=True)
class SentencePipeline:
    modules: tuple  # the module class names in order, e.g. ("Transformer", "Pooling", "Normalize")
    folders: tuple  # the modules' subfolders (1_Pooling, ...), "" for the Transformer's (the folder itself)
    pooling: tuple  # the Pooling module's modes, () without one
    normalize: bool  # a Normalize module (L2) after the pooling

    def graph_pooling(self):
        """(the checkpoint's pooling as the graph computes it: "mean", "cls" or "max", None without a Pooling
        module; why the graph cannot compute the pipeline, or None)."""
        if not self.pooling:
            return None, None
        if len(self.pooling) != 1 or self.pooling[0] not in GRAPH_MODES:
            return None, f"pools with {' + '.join(self.pooling)}, which the graph does not compute"
        if self.modules not in (("Transformer", "Pooling"), ("Transformer", "Pooling", "Normalize")):
            return None, f"has modules the graph does not compute ({' -> '.join(self.modules)})"
        return self.pooling[0], None


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise LSGExportError(f"{path}: cannot read the sentence-transformers file ({error.__class__.__name__})") \
            from None


def pooling_modes(config):
    """The modes of a sentence-transformers Pooling config: `pooling_mode` (a name or a list), or the older
    flags (none set: mean, as sentence-transformers reads it)."""
    mode = config.get("pooling_mode")
    if mode is not None:
        return tuple(mode) if isinstance(mode, (list, tuple)) else (str(mode),)
    return tuple(name for key, name in FLAG_MODES.items() if config.get(key)) or ("mean",)


def read_pipeline(folder):
    """The SentencePipeline of a folder's modules.json, or None (no modules.json: not a sentence-transformers
    checkpoint). LSGExportError for a corrupt file."""
    folder = Path(folder)
    if not (folder / MODULES_FILE).is_file():
        return None
    entries = _read_json(folder / MODULES_FILE)
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "type" in e for e in entries):
        raise LSGExportError(f"{folder / MODULES_FILE}: not a list of sentence-transformers modules")
    modules = tuple(str(e["type"]).rpartition(".")[2] for e in entries)
    folders = tuple(str(e.get("path") or "") for e in entries)
    pooling = ()
    if "Pooling" in modules:
        config_file = folder / folders[modules.index("Pooling")] / "config.json"
        pooling = pooling_modes(_read_json(config_file)) if config_file.is_file() else ("mean",)
    return SentencePipeline(modules, folders, pooling, "Normalize" in modules)


def copy_pipeline(source, target, max_seq_length):
    """Copy the sentence-transformers files of `source` (modules.json and its settings, every module's
    subfolder) into `target`, with `max_seq_length` set to the new length. Returns the pipeline or None."""
    source, target = Path(source), Path(target)
    pipeline = read_pipeline(source)
    if pipeline is None:
        return None
    for name in TOP_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
    for sub in pipeline.folders:
        if sub and (source / sub).is_dir():  # Normalize has no files: often no folder at all
            shutil.copytree(source / sub, target / sub, dirs_exist_ok=True)
    settings = _read_json(target / SETTINGS_FILE) if (target / SETTINGS_FILE).is_file() else {}
    settings["max_seq_length"] = max_seq_length
    (target / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return pipeline


def pipeline_folder(source):
    """A local folder holding the sentence-transformers files of `source` (a folder, or a hub id: its files
    from the hub cache, or the hub when reachable), or None."""
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import snapshot_download
        offline = not hub_reachable()
        folder = Path(snapshot_download(source, allow_patterns=list(TOP_FILES), local_files_only=offline))
        pipeline = read_pipeline(folder)
        if pipeline is not None:  # then the modules' subfolders (pooling config, Dense weights ...)
            subfolders = [f"{sub}/*" for sub in pipeline.folders if sub]
            if subfolders:
                snapshot_download(source, allow_patterns=subfolders, local_files_only=offline)
    except Exception:  # not cached offline, no such repository: no pipeline to carry
        return None
    return folder if (folder / MODULES_FILE).is_file() else None
