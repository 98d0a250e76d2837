"""How many CPU threads moca_rt's compute uses: one policy for the CLIs and the library.

Why (issue 10, measured in ``benchmarks/threads.py``): on a busy 2-core machine the demo ran at
0.5 frames/s with torch's default of one intra-op thread per core, and at 2.7 frames/s with one
thread. The models are small per call (a frame, a few proposals), so an intra-op parallel region
lasts microseconds to milliseconds; every region ends in a barrier, and OpenMP's worker threads
spin-wait for the next one. When another process (or our own decoder thread, which decodes the
next frames meanwhile) holds one of the cores, a worker is descheduled inside the region and the
whole op waits a full scheduler time slice for it: tiny ops become 10-100x slower. The default
therefore leaves cores free for the decoder thread and the rest of the machine:

* ``default_threads()``: half the CPUs this process may run on, at least 1 and at most 8
  (1 on a 2-core machine, 8 on a 16-core one); ``MOCA_THREADS`` overrides it.
* :func:`configure_threads` applies a count: torch's intra-op threads, one inter-op thread
  (the pipeline runs one op at a time), and records the count for engines that make their own
  pools (onnxruntime's ``intra_op_num_threads``: :func:`configured_threads`).

The CLIs call ``configure_threads(args.threads)`` once at start; library callers may call it or
set ``torch.set_num_threads`` themselves (nothing in the library changes it behind their back).
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["THREADS_ENV", "configure_threads", "configured_threads", "default_threads"]

THREADS_ENV = "MOCA_THREADS"
_MAX_DEFAULT = 8
_configured: int | None = None


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """``MOCA_THREADS`` when set, else half the available CPUs, clamped to [1, 8]."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            value = int(env)
        except ValueError as e:
            raise ValueError(f"{THREADS_ENV}: expected a whole number >= 1, got {env!r}") from e
        if value < 1:
            raise ValueError(f"{THREADS_ENV}: expected a whole number >= 1, got {env!r}")
        return value
    return max(1, min(_MAX_DEFAULT, available_cpus() // 2))


def configure_threads(threads: int | None = None) -> int:
    """Use ``threads`` CPU threads for compute (None: :func:`default_threads`); returns it.

    Sets torch's intra-op threads and, when torch has not started its inter-op pool yet, one
    inter-op thread. Raises ValueError for a count below 1.
    """
    import torch

    global _configured
    n = default_threads() if threads is None else threads
    if n < 1:
        raise ValueError(f"threads: expected >= 1, got {n}")
    torch.set_num_threads(n)
    if torch.get_num_interop_threads() != 1:
        # RuntimeError: the pool already ran work; its size is fixed for this process
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
    _configured = n
    return n


def configured_threads() -> int:
    """The count of the last :func:`configure_threads` call, else :func:`default_threads`
    (for engines that size their own thread pools, such as onnxruntime sessions)."""
    return _configured if _configured is not None else default_threads()
