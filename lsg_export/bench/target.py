"""What is benchmarked: a converted folder or an export folder (export.json names its model), and at which lengths."""
from dataclasses import dataclass
from pathlib import Path

from ..errors import LSGExportError
from ..sources import EXPORT_JSON
from .backends import export_kind

DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192)
QUICK_LENGTHS = (128, 256)


@dataclass
class Target:
    model: Path  # the converted LSG folder
    info: object  # its lsg_export.onnx.tasks.ModelInfo
    task: str
    export: Path = None  # the export folder given (or the last one made here, for the command line)
    export_kind: str = None  # the ort-* backend that export serves
    chosen: str = "given"  # how the target was found: given, last export, last convert

    @property
    def seq2seq(self):
        """An encoder-decoder (bart, mbart, pegasus): encoder latency and generation are measured."""
        return self.info.family.seq2seq

    def describe(self):
        what = f"{self.export} (export of {self.model})" if self.export else str(self.model)
        return what if self.chosen == "given" else f"{what}, the {self.chosen} made from here"


def resolve_target(path, chosen="given"):
    """A Target from MODEL_OR_EXPORT `path`; chosen: how the caller found it (the command line, given no
    folder, says "last export" or "last convert")."""
    from ..onnx.tasks import infer_task, read_model_folder
    path = Path(path).resolve()
    if (path / EXPORT_JSON).is_file():
        from ..onnx.pipeline import read_export_folder
        meta = read_export_folder(path)
        model = meta.get("model")
        if not model or not Path(model).is_dir():
            raise LSGExportError(f"{path}/export.json names the PyTorch model {model}, which is gone")
        info = read_model_folder(Path(model).resolve())
        return Target(info.path, info, meta["task"], path, export_kind(meta), chosen)
    info = read_model_folder(path.resolve())
    return Target(info.path, info, seq2seq_task(info) if info.family.seq2seq else infer_task(info), chosen=chosen)


def seq2seq_task(info):
    """Encoder-decoders are benchmarked generating text: a ForConditionalGeneration head is needed."""
    from ..onnx.seq2seq import TASK
    if info.head != "ForConditionalGeneration":
        raise LSGExportError(f"bench times encoder-decoders generating ({TASK}): {info.path} holds a "
                             f"{info.family.architecture(info.head)}, not a "
                             f"{info.family.architecture('ForConditionalGeneration')}")
    return TASK


def parse_ints(text, what):
    """'512,1024' (or a list) -> sorted unique positive ints; LSGExportError otherwise."""
    if isinstance(text, str):
        try:
            values = [int(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            raise LSGExportError(f"{what} must be comma-separated integers, got {text!r}") from None
    else:
        values = list(text)
    if not values or any(not isinstance(v, int) or v < 1 for v in values):
        raise LSGExportError(f"{what} must be positive integers, got {text!r}")
    return sorted(set(values))


def choose_lengths(seq, target, quick):
    """The lengths to run: --seq (each at most the model's maximum), else the defaults that fit."""
    longest = target.info.max_length
    if seq:
        lengths = parse_ints(seq, "--seq")
        above = [n for n in lengths if n > longest]
        if above:
            raise LSGExportError(f"--seq {','.join(map(str, above))} is above {target.model}'s maximum length "
                                 f"{longest}")
        return lengths
    defaults = QUICK_LENGTHS if quick else DEFAULT_LENGTHS
    return sorted({min(n, longest) for n in defaults})

