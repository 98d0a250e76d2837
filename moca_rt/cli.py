"""What the command-line entry points (``moca_rt.infer``, ``moca_rt.batch``, ``moca_rt.serve``,
``moca_rt.datasets``) share."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any


def flag_values(target: Callable[..., Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``given`` (``vars()`` of parsed flags) named like a parameter of
    ``target`` (a function, or a dataclass and its fields): a flag maps onto the parameter of
    its name, so the mapping is not written out flag by flag."""
    return {name: given[name] for name in inspect.signature(target).parameters if name in given}
