"""onnxruntime runner that speaks the export names and reports the provider it really got."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from moca_rt.engines.base import check_feeds
from moca_rt.errors import InputError

__all__ = ["OrtEngine"]

_ORT_TO_NUMPY: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


class OrtEngine:
    """An ``onnxruntime.InferenceSession`` behind the :class:`~moca_rt.engines.Engine` interface.

    onnxruntime silently falls back to the CPU when a requested provider cannot start (no CUDA,
    wrong CUDA/cuDNN version), so the session's real providers are kept in :attr:`providers`
    and :attr:`fell_back` says whether the first requested one is missing.

    Args:
        path: the ONNX file (its ``.data`` side file, if any, beside it).
        providers: requested execution providers in priority order.
        input_names, output_names: expected names (the constants of
            :mod:`moca_rt.engines.names`); ``ValueError`` if the graph's names differ. None
            takes the graph's names.
        A file that onnxruntime cannot load (not ONNX, corrupt, missing external data) raises
        :class:`~moca_rt.errors.InputError` with onnxruntime's message.
        strict_provider: raise ``RuntimeError`` instead of warning when the first requested
            provider is not in use.
        intra_op_threads: onnxruntime's intra-op thread count (0 lets it choose).
        allow_spinning: let onnxruntime's idle intra-op threads spin waiting for work (its own
            default). Off here: in the pipeline, torch stages run between engine calls, and
            spinning threads took their CPU (measured on 2 cores, moca_synth, batch 4: the
            k-means stage 13.4 ms/frame with spinning, 2.3 without). Turn it on for a process
            that runs nothing but engine calls.
        disabled_optimizers: names of onnxruntime graph transformers not to apply (its
            ``InferenceSession(disabled_optimizers=...)``), where a fusion makes a graph slower.
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        strict_provider: bool = False,
        intra_op_threads: int = 0,
        allow_spinning: bool = False,
        disabled_optimizers: Sequence[str] = (),
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "OrtEngine needs onnxruntime: pip install 'moca-rt[onnx]' "
                "(or onnxruntime-gpu for the CUDA provider)"
            ) from exc
        if not Path(path).is_file():
            raise ValueError(f"expected an ONNX file, got {str(path)!r} (not found)")
        if not providers:
            raise ValueError("expected at least one execution provider, got none")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
        )
        available = ort.get_available_providers()
        self.requested_providers = tuple(providers)
        try:
            self.session = ort.InferenceSession(
                str(path),
                sess_options=options,
                providers=[p for p in providers if p in available] or ["CPUExecutionProvider"],
                disabled_optimizers=list(disabled_optimizers) or None,
            )
        except _onnxruntime_errors() as exc:
            raise InputError(f"onnxruntime cannot load {path}: {exc}") from exc
        self.providers: tuple[str, ...] = tuple(self.session.get_providers())
        self.fell_back = self.requested_providers[0] not in self.providers
        if self.fell_back:
            msg = (
                f"requested {self.requested_providers[0]}, got {list(self.providers)} "
                f"(available here: {available})"
            )
            if strict_provider:
                raise RuntimeError(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        graph_in = tuple(i.name for i in self.session.get_inputs())
        graph_out = tuple(o.name for o in self.session.get_outputs())
        if input_names is not None and tuple(input_names) != graph_in:
            raise ValueError(f"expected graph inputs {tuple(input_names)}, got {graph_in}")
        if output_names is not None and tuple(output_names) != graph_out:
            raise ValueError(f"expected graph outputs {tuple(output_names)}, got {graph_out}")
        self.input_names = graph_in
        self.output_names = graph_out
        self._input_types = {i.name: _ORT_TO_NUMPY.get(i.type) for i in self.session.get_inputs()}

    @property
    def provider(self) -> str:
        """The provider that runs the graph's nodes first in priority (the one really used)."""
        return self.providers[0]

    def _to_numpy(self, name: str, value: Tensor | np.ndarray) -> np.ndarray:
        arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
        want = self._input_types.get(name)
        return arr.astype(want, copy=False) if want is not None else arr

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, Tensor]:
        """Run on ``{input name: tensor or array}``; returns CPU tensors by output name."""
        check_feeds(feeds, self.input_names)
        arrays = {n: self._to_numpy(n, feeds[n]) for n in self.input_names}
        outs = self.session.run(list(self.output_names), arrays)
        return {
            n: torch.from_numpy(np.asarray(o)) for n, o in zip(self.output_names, outs, strict=True)
        }


def _onnxruntime_errors() -> tuple[type[Exception], ...]:
    """onnxruntime's own exception classes (``Fail``, ``InvalidProtobuf``, ``NoSuchFile``, ...):
    its native layer derives each from Exception alone, with no common base to catch."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(
        v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception)
    )
