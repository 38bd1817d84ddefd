"""The checked settings of a validation: of the one an export runs, and of a re-validation (from the
arguments, else from export.json)."""
from dataclasses import dataclass
from pathlib import Path

from ..errors import LSGExportError
from ..sources import EXPORT_JSON
from .optimize import check_options
from .tasks import ModelInfo, read_model_folder
from .validate import DEFAULT_ATOL, default_lengths, parse_lengths


@dataclass(frozen=True)
class ValidationSettings:
    info: ModelInfo  # the PyTorch model compared with
    lengths: list
    batch_size: int
    atol: float
    enforced: bool  # False: differences are reported, never failed (int8)
    device: str


def resolve_atol(atol, fp16, quantize, optimize=None):
    """(atol, enforced): 1e-4 in float32, 1e-3 with O3's Gelu approximation, 1e-2 in float16; int8 only reports."""
    if atol is not None and atol < 0:
        raise LSGExportError(f"--atol must be positive, got {atol}")
    default = DEFAULT_ATOL["fp16" if fp16 else ("O3" if optimize == "O3" else "fp32")]
    return atol if atol is not None else default, quantize is None


def check_lengths(info, seq, lengths, batch_size):
    """(seq, validation lengths) of an export request: --seq within the position table (default: all of
    it), then check_validation."""
    seq = info.max_length if seq is None else seq
    if not isinstance(seq, int) or not 1 <= seq <= info.max_length:
        raise LSGExportError(f"--seq {seq} is outside 1..{info.max_length}, the lengths {info.path}'s position "
                             f"table covers")
    return seq, check_validation(info, seq, lengths, batch_size)


def check_validation(info, seq, lengths, batch_size):
    """Validation lengths of a graph valid up to seq: --lengths within 1..seq (default: around the block
    boundaries), with a positive --batch-size."""
    lengths = parse_lengths(lengths, seq) if lengths else default_lengths(info.config["block_size"], seq)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LSGExportError(f"--batch-size must be positive, got {batch_size}")
    return lengths


def export_lengths(meta):
    """The lengths an export was validated at when it was written (folders from before the history: the
    lengths of their recorded validation)."""
    history = meta.get("validations") or [meta.get("validation") or {}]
    return meta.get("validation_lengths") or history[0].get("lengths")


def validation_settings(folder, meta, model, lengths, batch_size, atol, device):
    """ValidationSettings of a re-validation of an export folder, from the arguments or else from its
    export.json (`meta`)."""
    source = model or meta.get("model")
    if source and model is None and not Path(source).is_dir():
        raise LSGExportError(f"the PyTorch model {source} named in {folder / EXPORT_JSON} is gone: pass --model")
    info = read_model_folder(source)
    lengths = check_validation(info, int(meta["seq"]), lengths or export_lengths(meta), batch_size)
    fp16, quantize = meta.get("fp16"), meta.get("quantize")
    atol, enforced = resolve_atol(atol, fp16, quantize, (meta.get("optimize") or {}).get("level"))
    device = device or meta.get("device", "cpu")
    check_options("none", bool(fp16), quantize and "int8", device)
    return ValidationSettings(info, lengths, batch_size, atol, enforced, device)
