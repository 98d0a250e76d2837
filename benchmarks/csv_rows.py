"""Appending result rows to a benchmark's CSV file (imported by the benchmark scripts, which run
with this folder first on ``sys.path``)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def append_rows(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    fieldnames: Sequence[str] | None = None,
    lineterminator: str = "\r\n",
) -> None:
    """Append ``rows`` to the CSV file at ``path``, writing the header first when the file is
    new. ``fieldnames`` default to the keys of the first row; nothing is written without rows."""
    if not rows:
        return
    new = not path.exists()
    with path.open("a", newline="") as fh:
        columns = list(fieldnames) if fieldnames is not None else list(rows[0])
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator=lineterminator)
        if new:
            writer.writeheader()
        writer.writerows(rows)
