"""Backend choice shared by every op: ``MOCA_RT_KERNELS=torch|triton|cupy`` or automatic.

Automatic means Triton for CUDA tensors when Triton imports, the torch reference otherwise.
With ``TRITON_INTERPRET=1`` (set before import) Triton kernels also run on CPU tensors; tests use
that. An op whose kernel cannot take an input (dtype, size limit) falls back to its reference.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Literal

import torch

Backend = Literal["torch", "triton", "cupy"]
_VALID: tuple[Backend, ...] = ("torch", "triton", "cupy")
ENV_VAR = "MOCA_RT_KERNELS"


def requested_backend() -> Backend | None:
    """The backend forced by ``MOCA_RT_KERNELS``, or None for automatic choice."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in _VALID:
        raise ValueError(f"{ENV_VAR} must be one of {list(_VALID)} or 'auto', is {value!r}")
    return value  # type: ignore[return-value]


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def triton_available() -> bool:
    """Whether triton is installed, found without importing it.

    Importing triton fixes, for the whole process, whether its own library functions
    (``tl.sum``, ``tl.cumsum``...) are compiled or interpreted (``TRITON_INTERPRET``), so
    backend checks never import it; kernels import it on first launch.
    """
    return importlib.util.find_spec("triton") is not None


@functools.cache
def cupy_available() -> bool:
    try:
        import cupy

        return bool(cupy.cuda.runtime.getDeviceCount() > 0)
    except Exception:  # CuPy imports without a GPU but cannot run; any failure means "no".
        return False


def triton_can_run_on(tensor: torch.Tensor) -> bool:
    """Triton can launch on ``tensor``: a CUDA tensor, or any tensor under TRITON_INTERPRET=1."""
    return (tensor.is_cuda or triton_interpreting()) and triton_available()


def choose_backend(tensor: torch.Tensor) -> Backend:
    """Backend for an op on ``tensor``: the env switch if set, else Triton where it can run."""
    forced = requested_backend()
    if forced is not None:
        return forced
    return "triton" if triton_can_run_on(tensor) else "torch"


def triton_unsupported_reason(tensor: torch.Tensor) -> str | None:
    """None if Triton can launch on ``tensor`` (:func:`triton_can_run_on`), else the reason.

    The device part of every Triton launcher's ``..._supports`` check; size limits are the op's.
    """
    if triton_can_run_on(tensor):
        return None
    return "Triton cannot run on this tensor (no CUDA tensor and TRITON_INTERPRET unset)"


def cupy_unsupported_reason(tensor: torch.Tensor) -> str | None:
    """None if the CuPy launchers can run on ``tensor`` (a CUDA tensor, usable CuPy), else why.

    The device part of every CuPy launcher's ``..._supports`` check; size limits are the op's.
    """
    if not tensor.is_cuda:
        return f"expected a CUDA tensor for the cupy backend, got device {tensor.device}"
    if not cupy_available():
        return "CuPy cannot run here (not installed or no visible GPU)"
    return None


def check_forced_cupy(tensor: torch.Tensor) -> None:
    """Raise ``ValueError`` when ``MOCA_RT_KERNELS=cupy`` cannot run on ``tensor`` at all.

    A forced CuPy backend without a CUDA tensor or a usable CuPy is a setup error, not a case
    for the silent fallback that size limits get.
    """
    if not (tensor.is_cuda and cupy_available()):
        raise ValueError(
            "expected a CUDA tensor and a working CuPy for MOCA_RT_KERNELS=cupy, got "
            f"device {tensor.device} (cupy usable: {cupy_available()}); install cupy-cuda12x "
            "on a GPU machine or unset MOCA_RT_KERNELS"
        )
