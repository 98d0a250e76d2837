"""Inference engines: one interface (:class:`Engine`), runners that speak the export names.

``OrtEngine`` (onnxruntime) imports onnxruntime only when an engine is built.
"""

from moca_rt.engines.base import Engine, TorchEngine
from moca_rt.engines.ort import OrtEngine

__all__ = ["Engine", "OrtEngine", "TorchEngine"]
