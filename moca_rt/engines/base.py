"""The engine interface: named tensors in, named tensors out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = ["Engine", "TorchEngine", "check_feeds"]


@runtime_checkable
class Engine(Protocol):
    """A runnable export unit.

    ``input_names`` / ``output_names`` are the constants of :mod:`moca_rt.export.names`;
    calling the engine with ``{input name: tensor}`` returns ``{output name: tensor}`` in
    ``output_names`` order. Shapes and dtypes are those the unit documents.
    """

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]: ...


def check_feeds(feeds: Mapping[str, object], input_names: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``feeds`` holds exactly the inputs ``input_names``."""
    if set(feeds) != set(input_names):
        missing = [n for n in input_names if n not in feeds]
        extra = sorted(n for n in feeds if n not in input_names)
        raise ValueError(
            f"expected inputs {list(input_names)}, got {sorted(feeds)} "
            f"(missing {missing}, unexpected {extra})"
        )


class TorchEngine:
    """Runs an export wrapper (``moca_rt.export.wrappers``) eagerly under ``no_grad``.

    Args:
        module: a wrapper whose ``forward`` takes the inputs positionally in ``input_names``
            order and returns one tensor or a tuple in ``output_names`` order.
    """

    def __init__(
        self, module: nn.Module, input_names: Sequence[str], output_names: Sequence[str]
    ) -> None:
        self.module = module.eval()
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        check_feeds(feeds, self.input_names)
        with torch.no_grad():
            out = self.module(*(feeds[n] for n in self.input_names))
        outs = (out,) if isinstance(out, Tensor) else tuple(out)
        if len(outs) != len(self.output_names):
            raise ValueError(f"expected {len(self.output_names)} outputs, got {len(outs)}")
        return dict(zip(self.output_names, outs, strict=True))
