"""The custom-op library in ONNX Runtime sessions: the ops' names, registering the library in a
SessionOptions, and one clear error for a graph that needs it and lacks it.

    from lsg_export.ops import session_options_with_ops
    session = onnxruntime.InferenceSession(path, session_options_with_ops())
"""
import contextlib

from ..errors import LSGExportError
from .build import BUILD_HINT, library_path

DOMAIN = "ai.lsg"
OP_TYPE = "BlockSparseAttention"  # the block part of LSG attention, operands (n, h, rows, d)
LSG_OP_TYPE = "LSGAttention"  # the whole LSG attention in the projections' (n, G + T, h * d) layout
OP_VERSION = 1
# the oldest onnxruntime that loads the library: it asks for C API version 17 (kOrtApiVersion in
# custom_ops/src/lsg_ops.cc), which ONNX Runtime 1.17 brought; custom_ops/ort-versions.json has the tested wheels
MIN_ONNXRUNTIME = "1.17"


def session_options_with_ops(options=None):
    """onnxruntime.SessionOptions (a new one, or `options`) with the custom-op library registered."""
    import onnxruntime as ort

    options = options if options is not None else ort.SessionOptions()
    path = library_path()
    try:
        options.register_custom_ops_library(str(path))
    except Exception as error:  # e.g. an onnxruntime older than the library needs
        raise LSGExportError(f"loading the custom-op library {path} failed: {_first_line(error)}") from error
    return options


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def needs_custom_ops(error):
    """Whether an onnxruntime error says that the ai.lsg ops are not registered."""
    text = str(error)
    return DOMAIN in text or OP_TYPE in text or LSG_OP_TYPE in text


@contextlib.contextmanager
def explain_missing_ops():
    """Turns ONNX Runtime's error for a graph that uses ai.lsg ops without the library into one line."""
    try:
        yield
    except LSGExportError:
        raise
    except Exception as error:
        if needs_custom_ops(error):
            raise LSGExportError(f"this model uses the custom ops of {DOMAIN}, which need the LSG custom-op "
                                 f"library: {BUILD_HINT} and open it with lsg_export.ops.session_options_with_ops()"
                                 ) from error
        raise


def inference_session(model, options=None, providers=None, with_ops=True):
    """onnxruntime.InferenceSession of `model` (path or bytes), with the custom ops registered unless
    with_ops=False; a graph that needs them and lacks them fails with one LSGExportError line."""
    import onnxruntime as ort

    if with_ops:
        options = session_options_with_ops(options)
    with explain_missing_ops():
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=options,
                                    providers=providers or ["CPUExecutionProvider"])
