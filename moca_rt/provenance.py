"""Where a result came from: the git commit of the code that made it, the sha256 of its files.

Training checkpoints and benchmark rows record the commit; outside a git checkout (an installed
wheel) there is none. File hashes check shipped weights and key the TensorRT engine cache.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["git_commit", "sha256_file"]

# The checkout root when moca_rt runs from its source tree (an editable install).
_ROOT = Path(__file__).resolve().parent.parent


def git_commit(
    *, short: bool = False, dirty_paths: Sequence[str] = (), root: Path | None = None
) -> str | None:
    """HEAD's commit hash, or None outside a git checkout.

    Args:
        short: the first 12 hex digits instead of all 40.
        dirty_paths: paths relative to ``root``; ``+dirty`` is appended when any of them
            differs from HEAD (uncommitted changes to the code that ran).
        root: the checkout to ask (default: the one moca_rt itself runs from).
    """
    cwd = _ROOT if root is None else root
    try:
        head = subprocess.run(
            ["git", "rev-parse", *(["--short=12"] if short else []), "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if head.returncode != 0 or not head.stdout.strip():
            return None
        dirty = (
            bool(dirty_paths)
            and subprocess.run(
                ["git", "diff", "--quiet", "HEAD", "--", *dirty_paths],
                cwd=cwd,
                timeout=10,
                check=False,
            ).returncode
            != 0
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def sha256_file(path: str | Path) -> str:
    """The sha256 (hex) of the file's bytes, read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()
