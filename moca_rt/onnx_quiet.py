"""A quiet ONNX export: what both of our exporters (``moca_rt.export``, the grid decoder) share.

torch's dynamo exporter logs one warning per torchvision operator it cannot register when
torchvision is absent ("torchvision is not installed. Skipping torchvision::nms"), four lines per
export call. moca_rt never uses torchvision (docs/design.md), so these lines only bury the
notes a user should read. Python warnings are silenced too: the exporter's deprecation and
tracing warnings are about torch internals; a failed export still raises.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import torch

__all__ = ["quiet_export"]

_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """``no_grad``, Python warnings ignored and the exporter's operator-registry log at ERROR."""
    logger = logging.getLogger(_REGISTRY_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
