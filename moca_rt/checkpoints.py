"""Reading checkpoints and loading them strictly (STYLE point 3).

Every model builds on the meta device and loads with ``strict=True, assign=True``; key renames
live in one explicit map owned by the model module. A wrong file fails with the missing and
unexpected keys named, never with a shape error deep inside ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from moca_rt.errors import CheckpointError

_WRAPPER_KEYS = ("model", "state_dict", "module")


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose keys or shapes do not fit the model it is loaded into."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file or a torch pickle (``weights_only``, memory-mapped).

    A pickle that wraps its tensors in ``{"model": ...}`` or ``{"state_dict": ...}`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:
        # Old (non-zip) pickles cannot be memory-mapped.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(f"{path} does not hold a flat dict of tensors")
    return dict(obj)


def _preview(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state_dict`` into ``module`` with strict=True and assign=True.

    Raises:
        CheckpointMismatchError: naming the missing keys, unexpected keys and shape mismatches,
            with ``what`` (e.g. "ImageBind vision/audio") saying which model was expected.
    """
    expected = module.state_dict(keep_vars=True)
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys [{_preview(missing)}]")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys [{_preview(unexpected)}]")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} shape mismatches [{_preview(wrong_shape, 6)}]")
        raise CheckpointMismatchError(f"checkpoint does not fit {what}: " + "; ".join(parts))
    module.load_state_dict(dict(state_dict), strict=True, assign=True)
