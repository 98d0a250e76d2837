"""The engine interface: named tensors in, named tensors out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = ["Engine", "TorchEngine", "check_feeds", "name_mismatch"]


@runtime_checkable
class Engine(Protocol):
    """A runnable export unit.

    ``input_names`` / ``output_names`` are the constants of :mod:`moca_rt.engines.names`;
    calling the engine with ``{input name: tensor}`` returns ``{output name: tensor}`` in
    ``output_names`` order. Shapes and dtypes are those the unit documents.
    """

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]: ...


def name_mismatch(what: str, expected: Sequence[str], got: Sequence[str]) -> str | None:
    """None when ``got`` holds exactly the names ``expected`` (in any order), else
    ``"expected <what> [...], got [...] (missing [...], unexpected [...])"`` (lists in the
    order given)."""
    if set(expected) == set(got):
        return None
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
    return (
        f"expected {what} {list(expected)}, got {list(got)} (missing {missing}, unexpected {extra})"
    )


def check_feeds(feeds: Mapping[str, object], input_names: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``feeds`` holds exactly the inputs ``input_names``."""
    problem = name_mismatch("inputs", input_names, sorted(feeds))
    if problem is not None:
        raise ValueError(problem)


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
