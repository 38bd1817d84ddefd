"""What differs between the transformers versions lsg-export runs on (4.5x and 5.x), outside the copied
modeling code (that is modeling/lsg_compat.py), and the optional optimum extra.

optimum and optimum-onnx are the `[optimum]` extra: optimum-onnx pins the transformers it supports, so
they are installed only where that transformers is. Code that truly needs them calls require_optimum."""
import importlib.util

from .errors import LSGExportError

OPTIMUM_EXTRA = "pip install 'lsg-export[optimum]'"


def has_optimum():
    """optimum.onnxruntime importable (optimum and optimum-onnx installed, for this transformers)."""
    if importlib.util.find_spec("optimum") is None:
        return False
    try:
        import optimum.onnxruntime  # noqa: F401
    except Exception:  # installed beside a transformers it does not support: unusable all the same
        return False
    return True


def require_optimum(what):
    """Raise the one-line user error naming the extra when optimum cannot be used for `what`."""
    if not has_optimum():
        raise LSGExportError(f"{what} needs optimum and optimum-onnx, which are not installed for this "
                             f"transformers: {OPTIMUM_EXTRA} (optimum-onnx supports transformers < 4.58 today)")


def no_init_weights():
    """transformers' context that skips random initialisation (modeling_utils in 4.x, initialization in 5.x)."""
    try:
        from transformers.initialization import no_init_weights as context
    except ImportError:
        from transformers.modeling_utils import no_init_weights as context
    return context()


def config_errors():
    """What building a config from bad values raises: ValueError / TypeError, and from transformers 5 the
    strict dataclass validation of huggingface_hub (an Exception of its own)."""
    errors = (ValueError, TypeError)
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return errors
    return errors + (StrictDataclassError,)


def cache_from_layers(layers):
    """An EncoderDecoderCache from per-layer (self key, self value, cross key, cross value): 4.x's
    from_legacy_cache where it exists (5.x removed it), else filled layer by layer."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache
    if hasattr(EncoderDecoderCache, "from_legacy_cache"):
        return EncoderDecoderCache.from_legacy_cache(layers)
    own, cross = DynamicCache(), DynamicCache()
    for i, (key, value, cross_key, cross_value) in enumerate(layers):
        own.update(key, value, i)
        cross.update(cross_key, cross_value, i)
    return EncoderDecoderCache(own, cross)


def cache_layers(cache):
    """Per-layer (self key, self value, cross key, cross value) of an EncoderDecoderCache (4.x's
    to_legacy_cache; 5.x: read from its layers)."""
    if hasattr(cache, "to_legacy_cache"):
        return cache.to_legacy_cache()
    return tuple((own.keys, own.values, cross.keys, cross.values) for own, cross in
                 zip(cache.self_attention_cache.layers, cache.cross_attention_cache.layers))


def cache_argument(module):
    """The name under which `module.forward` takes its key / value cache: `cache` from transformers 5.2x
    (`past_key_values` still accepted there, with a deprecation warning), `past_key_values` before."""
    import inspect
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
