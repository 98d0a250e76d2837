"""What the command-line entry points (``moca_rt.infer``, ``moca_rt.batch``, ``moca_rt.serve``)
share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any


def field_values(cls: type, given: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``given`` (``vars()`` of parsed flags) that are named like a field of the
    dataclass ``cls``: a flag maps onto the field of its name, so the mapping is written once."""
    return {f.name: given[f.name] for f in fields(cls) if f.name in given}
