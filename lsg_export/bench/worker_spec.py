"""What a worker process is asked to do, sent to it pickled: measure one backend (WorkerSpec, which the
backends' loaders also read) or compute the quality columns' float32 references (ReferenceSpec)."""
from dataclasses import dataclass

WARMUP, REPEAT = 3, 20  # untimed and timed runs per (length, batch) unless told otherwise


@dataclass(frozen=True)
class WorkerSpec:
    """One backend's measurement in its own process (measure.measure_backend)."""
    backend: str  # a name of backends.BACKENDS
    model: str  # the converted LSG folder
    task: str
    device: str = "cpu"
    threads: int = 1
    lengths: tuple = ()  # ascending
    batches: tuple = ()
    export: str = None  # ort-*: the export folder run
    warmup: int = WARMUP
    repeat: int = REPEAT
    quick: bool = False  # the --quick time limits (measure.LIMITS)
    new_tokens: int = None  # encoder-decoders: tokens of the timed generation
    num_beams: int = None  # encoder-decoders: its beams (None: greedy)
    quality: dict = None  # {"ids", "references"}: the quality columns, measured after the timed runs


@dataclass(frozen=True)
class ReferenceSpec:
    """float32 PyTorch's outputs on the document at each length, saved to `folder` (measure.reference_main)."""
    model: str
    task: str
    threads: int
    lengths: tuple
    ids: object  # the document (onnx.validate.Document), or None: random ids
    folder: str
