"""TensorRT runner that speaks the export names: a serialised engine behind the Engine interface.

TensorRT is optional and imported only when an engine is loaded or built. An empty namespace
package named ``tensorrt`` (left by ``tensorrt-stubs`` installed without its dependencies)
imports without error, so :func:`trt_available` checks for the real module (``Builder`` and
``__version__``), never just a successful import.

Engines come from :func:`moca_rt.export.build_trt.build_engine`. Inputs and outputs stay on
the engine's CUDA device as torch tensors; the engine runs on torch's current stream, so it
orders with the torch work before and after it without a host synchronisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from moca_rt.engines.base import check_feeds, name_mismatch

if TYPE_CHECKING:
    import tensorrt

__all__ = [
    "TENSORRT_MISSING",
    "TRT_DTYPES",
    "TrtEngine",
    "check_input_shape",
    "require_cuda",
    "require_tensorrt",
    "torch_dtype",
    "trt_available",
    "trt_version",
]

TENSORRT_MISSING = (
    "TensorRT is not available: install tensorrt>=10 (pip install 'moca-rt[trt]') on a machine "
    "with NVIDIA's libraries"
)

# TensorRT DataType member name -> torch dtype. Keyed by name so the table is usable (and
# testable) without TensorRT; FP4, INT4 and E8M0 have no torch storage type.
TRT_DTYPES: dict[str, torch.dtype] = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
    "FP8": torch.float8_e4m3fn,
}


def trt_available() -> bool:
    """True only when the real TensorRT Python module (with ``Builder``, ``__version__``) loads."""
    try:
        import tensorrt as trt
    except (ImportError, OSError):  # OSError: the wheel is there but libnvinfer is not
        return False
    return hasattr(trt, "Builder") and isinstance(getattr(trt, "__version__", None), str)


def require_tensorrt() -> None:
    """Raise ``RuntimeError`` with :data:`TENSORRT_MISSING` unless :func:`trt_available`."""
    if not trt_available():
        raise RuntimeError(TENSORRT_MISSING)


def trt_version() -> str:
    """The TensorRT version string (``RuntimeError`` when TensorRT is missing)."""
    require_tensorrt()
    import tensorrt as trt

    return str(trt.__version__)


def require_cuda(device: int | str | torch.device = 0) -> torch.device:
    """The CUDA device ``device`` names; ``RuntimeError`` when there is no CUDA GPU.

    Args:
        device: an index, ``"cuda:N"`` or a ``torch.device`` of type cuda.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs a CUDA GPU, but torch sees none on this machine")
    dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"expected a CUDA device, got {dev}")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if not 0 <= index < torch.cuda.device_count():
        raise ValueError(
            f"expected a CUDA device index in [0, {torch.cuda.device_count()}), got {index}"
        )
    return torch.device("cuda", index)


def torch_dtype(trt_dtype_name: str) -> torch.dtype:
    """The torch dtype of a TensorRT ``DataType`` given by its member name (``"HALF"``)."""
    if trt_dtype_name not in TRT_DTYPES:
        raise ValueError(
            f"expected a TensorRT data type in {sorted(TRT_DTYPES)}, got {trt_dtype_name!r}"
        )
    return TRT_DTYPES[trt_dtype_name]


def check_input_shape(
    name: str,
    shape: Sequence[int],
    min_shape: Sequence[int],
    max_shape: Sequence[int],
) -> None:
    """Raise ``ValueError`` unless ``min_shape <= shape <= max_shape`` axis by axis (same rank)."""
    inside = len(shape) == len(min_shape) == len(max_shape) and all(
        lo <= s <= hi for s, lo, hi in zip(shape, min_shape, max_shape, strict=True)
    )
    if not inside:
        raise ValueError(
            f"expected {name} shape within {list(min_shape)}..{list(max_shape)}, got {list(shape)}"
        )


def _dims(dims: tensorrt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


class TrtEngine:
    """A deserialised TensorRT engine behind the :class:`~moca_rt.engines.Engine` interface.

    Each call checks the feeds (names, dtypes, shapes inside the engine's optimisation profile
    0), moves inputs to the engine's device as contiguous tensors, sets the input shapes,
    allocates the outputs as torch tensors of the shapes TensorRT infers, and enqueues the
    engine on torch's current stream of that device. Outputs are returned without waiting for
    the GPU (torch work on the same stream sees finished values).

    Args:
        engine_path: a serialised engine (``build_engine``'s output).
        input_names, output_names: expected IO names (the constants of
            :mod:`moca_rt.engines.names`); ``ValueError`` naming the differences when the
            engine's names differ. The expected order is kept; None takes the engine's order.
        device: CUDA device the engine runs on (index or ``torch.device``).
        logger: a ``tensorrt.ILogger``; default ``tensorrt.Logger(WARNING)``.

    Attributes:
        input_dtypes, output_dtypes: torch dtype per tensor name, from the engine.
        profile: ``{input name: (min, opt, max)}`` shapes of optimisation profile 0.
    """

    def __init__(
        self,
        engine_path: str | Path,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        device: int | str | torch.device = 0,
        logger: tensorrt.ILogger | None = None,
    ) -> None:
        path = Path(engine_path)
        if not path.is_file():
            raise ValueError(f"expected a TensorRT engine file, got {str(path)!r} (not found)")
        require_tensorrt()
        import tensorrt as trt

        self.device = require_cuda(device)
        self.logger = logger if logger is not None else trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(self.device):
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise RuntimeError(
                f"TensorRT {trt.__version__} could not deserialise {path} (built by another "
                "TensorRT version or for another GPU? rebuild it with build_engine(force=True))"
            )
        self.engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        graph_in = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        graph_out = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        for kind, expected, got in (
            ("inputs", input_names, graph_in),
            ("outputs", output_names, graph_out),
        ):
            problem = None if expected is None else name_mismatch(f"engine {kind}", expected, got)
            if problem is not None:
                raise ValueError(problem)
        self.input_names: tuple[str, ...] = tuple(input_names or graph_in)
        self.output_names: tuple[str, ...] = tuple(output_names or graph_out)
        self.input_dtypes = {n: torch_dtype(engine.get_tensor_dtype(n).name) for n in graph_in}
        self.output_dtypes = {n: torch_dtype(engine.get_tensor_dtype(n).name) for n in graph_out}
        self.profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
        for n in graph_in:
            static = _dims(engine.get_tensor_shape(n))
            if any(d < 0 for d in static):
                shapes = [_dims(d) for d in engine.get_tensor_profile_shape(n, 0)]
                if len(shapes) != 3:
                    raise RuntimeError(
                        f"expected min, opt, max profile shapes for {n}, got {shapes}"
                    )
            else:  # a static input is not part of the profile: its one shape is min and max
                shapes = [static, static, static]
            self.profile[n] = (shapes[0], shapes[1], shapes[2])
        with torch.cuda.device(self.device):
            self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {path}")

    def check_input(self, name: str, value: object) -> Tensor:
        """``value`` as a tensor after the dtype and profile checks (``ValueError`` otherwise)."""
        if not isinstance(value, Tensor):
            raise ValueError(f"expected {name} as a torch.Tensor, got {type(value).__name__}")
        want = self.input_dtypes[name]
        if value.dtype != want:
            raise ValueError(f"expected {name} dtype {want}, got {value.dtype}")
        lo, _, hi = self.profile[name]
        check_input_shape(name, tuple(value.shape), lo, hi)
        return value

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Run on ``{input name: tensor}``; returns ``{output name: tensor}`` on the device."""
        check_feeds(feeds, self.input_names)
        checked = {n: self.check_input(n, feeds[n]) for n in self.input_names}
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            inputs: dict[str, Tensor] = {}
            for n, value in checked.items():
                x = value.to(self.device).contiguous()
                inputs[n] = x  # keeps the memory alive until the enqueue below
                if not self.context.set_input_shape(n, tuple(x.shape)):
                    raise RuntimeError(f"TensorRT rejected input shape {list(x.shape)} for {n}")
                self.context.set_tensor_address(n, x.data_ptr())
            outputs: dict[str, Tensor] = {}
            for n in self.output_names:
                shape = _dims(self.context.get_tensor_shape(n))
                if any(s < 0 for s in shape):
                    raise RuntimeError(f"TensorRT could not infer the shape of {n}: {list(shape)}")
                out = torch.empty(shape, dtype=self.output_dtypes[n], device=self.device)
                outputs[n] = out
                self.context.set_tensor_address(n, out.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        return outputs
