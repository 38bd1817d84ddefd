"""How a backend's failure is told: its first line (errors.first_line), and whether it ran out of memory. Below both the
backends (loading errors) and the measuring processes (failed cells)."""
from ..errors import LSGExportError, first_line

OOM_MARKERS = ("out of memory", "can't allocate memory", "failed to allocate memory", "bad_alloc", "memoryerror")


def is_oom(error):
    text = f"{type(error).__name__} {error}".lower()
    return isinstance(error, MemoryError) or any(marker in text for marker in OOM_MARKERS)


def plain_line(error):
    """Our own errors' message as it is, others' with their type."""
    return str(error) if isinstance(error, LSGExportError) else first_line(error)
