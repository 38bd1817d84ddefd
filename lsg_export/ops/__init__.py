"""The ONNX Runtime custom-op library (`ai.lsg.LSGAttention`, `ai.lsg.BlockSparseAttention`): build, locate, load.

    from lsg_export.ops import session_options_with_ops
    session = onnxruntime.InferenceSession(path, session_options_with_ops())

Modules: build (CMake / npm: build_ops, library_path, the build cache), session (the ops' names,
registering the library in a SessionOptions, inference_session), cli (`lsg-export build-ops`),
cuda_harness (the CUDA kernel through ctypes, for tests).
"""
from .build import (BUILD_HINT, build_ops, cache_dir, library_path, missing_build_tool, ort_include_dir,
                    source_dir)
from .session import (DOMAIN, LSG_OP_TYPE, OP_TYPE, OP_VERSION, explain_missing_ops, inference_session,
                      needs_custom_ops, session_options_with_ops)

__all__ = ["DOMAIN", "OP_TYPE", "LSG_OP_TYPE", "OP_VERSION", "BUILD_HINT", "build_ops", "library_path",
           "session_options_with_ops", "explain_missing_ops", "inference_session", "missing_build_tool",
           "needs_custom_ops", "ort_include_dir", "cache_dir", "source_dir"]
