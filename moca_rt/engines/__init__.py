"""Inference engines: one interface (:class:`Engine`), runners that speak the export names.

``OrtEngine`` (onnxruntime) and ``TrtEngine`` (TensorRT) import their library only when an
engine is built.
"""

from moca_rt.engines.base import Engine, TorchEngine
from moca_rt.engines.moca_units import EngineMocaModel, MocaTrunk
from moca_rt.engines.ort import OrtEngine
from moca_rt.engines.trt import TrtEngine

__all__ = ["Engine", "EngineMocaModel", "MocaTrunk", "OrtEngine", "TorchEngine", "TrtEngine"]
