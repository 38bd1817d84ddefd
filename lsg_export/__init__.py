"""lsg-export: long-document LSG models from 512-token encoders, exported to ONNX."""
from .convert import ConvertResult, convert
from .errors import LSGExportError
from .families import FAMILIES

__all__ = ["convert", "ConvertResult", "LSGExportError", "FAMILIES"]
