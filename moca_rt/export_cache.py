"""Reusing an ONNX export folder: the units onnxruntime runs, exported once per model.

``--engine onnxruntime`` without ``--engine-dir`` (and ``--engine auto`` on the CPU) exports
the torch models it would otherwise run into a folder first: seconds for the tiny presets,
minutes and gigabytes for the huge ones. The folder then records what it was exported from in
``export.json`` (:func:`export_record`: the settings that shape the exported graphs, the
identity of each checkpoint file and of the code), and a later build whose record is the same
reuses the files instead of exporting again.

A checkpoint file is identified by its resolved path, size and modification time (as ``make``
decides staleness), not by its hash: hashing a 4.5 GB ImageBind-H checkpoint on every start
would cost seconds. Code that differs from its git commit (a dirty checkout) is never reused:
its graphs may differ from those the record names.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from moca_rt import __version__
from moca_rt.provenance import git_commit

__all__ = [
    "EXPORT_RECORD",
    "cache_root",
    "default_export_dir",
    "export_record",
    "forget",
    "is_current",
    "mark_current",
]

EXPORT_RECORD = "export.json"
# the folders whose code shapes an exported graph (a change there may change the graph)
_EXPORT_CODE = ("moca_rt", "export")


def cache_root() -> Path:
    """``$MOCA_RT_CACHE_DIR``, else ``$XDG_CACHE_HOME/moca_rt``, else ``~/.cache/moca_rt``."""
    if os.environ.get("MOCA_RT_CACHE_DIR"):
        return Path(os.environ["MOCA_RT_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "moca_rt"


def _file_identity(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    stat = Path(path).stat()
    return {
        "path": str(Path(path).resolve()),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def export_record(settings: dict[str, Any], checkpoints: dict[str, Path | None]) -> dict[str, Any]:
    """What an export folder is exported from, as a JSON-ready dict.

    Args:
        settings: the build settings that shape the exported graphs (preset, SAM preset,
            precision, seed of random weights, ...), JSON-ready values.
        checkpoints: each weight file by name (None: seeded random weights).
    """
    commit = git_commit(short=True, dirty_paths=_EXPORT_CODE)
    return {
        "moca_rt": __version__,
        "git_commit": commit,
        "torch": torch.__version__,
        "settings": settings,
        "checkpoints": {name: _file_identity(p) for name, p in sorted(checkpoints.items())},
    }


def _reusable(record: dict[str, Any]) -> bool:
    commit = record.get("git_commit")
    return not (isinstance(commit, str) and commit.endswith("+dirty"))


def default_export_dir(record: dict[str, Any]) -> Path:
    """The cache folder of ``record``: ``cache_root()/onnx/<sha256 of the record, 16 digits>``."""
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "onnx" / key


def is_current(folder: Path, record: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a finished export of exactly ``record`` (and may be reused)."""
    path = Path(folder) / EXPORT_RECORD
    if not _reusable(record) or not path.is_file():
        return False
    try:
        return bool(json.loads(path.read_text()) == record)
    except (OSError, ValueError):
        return False


def forget(folder: Path) -> None:
    """Drop ``folder``'s record before exporting into it (a half-written export is never reused)."""
    (Path(folder) / EXPORT_RECORD).unlink(missing_ok=True)


def mark_current(folder: Path, record: dict[str, Any]) -> None:
    """Record that ``folder`` now holds a finished export of ``record`` (written atomically, last).

    A dirty checkout's export is not recorded, so it is never reused.
    """
    path = Path(folder) / EXPORT_RECORD
    if not _reusable(record):
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
