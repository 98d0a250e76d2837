"""How many CPU threads moca_rt's compute uses: one policy for the CLIs and the library.

Why (issue 10; ``benchmarks/threads.py``, ``benchmarks/results/threads_demo.csv``): on this
2-core machine, shared with a training run and other jobs (load average 4 to 13), the demo ran at
0.49 frames/s with torch's default of one intra-op thread per core (0.13 with a competing 2-thread
process), and at 1.74 frames/s on one thread. The per-stage times say where: vision 200 ms/frame
on 2 threads against 26 on one, SAM proposals 1634 against 525. The cause is OpenMP's spin-wait,
not the decoder thread nor onnxruntime (the demo runs no onnxruntime; decoding its 50 frames
with their audio windows takes 0.55 s in all, against 20 to 385 s per run). The models are
small per call, so an intra-op parallel region lasts microseconds to milliseconds and ends in a
barrier; between regions, the workers spin. With more busy threads than free cores (our 2
workers plus the other processes), a worker is descheduled inside a region and the whole op
waits a scheduler time slice for it, while the spinning workers take the CPU the others need:
the same run with ``OMP_WAIT_POLICY=PASSIVE`` (idle workers sleep) went from 0.16 to 1.45
frames/s on 2 threads. With passive waits, 2 threads beat 1 in 4 of 5 paired runs (2.66 against
1.36 frames/s without added load, 1.58 against 0.83 with the competitor): a process with two
runnable threads also gets a larger share of a contended machine.

The policy:

* ``default_threads()``: with passive OpenMP waits (``OMP_WAIT_POLICY=PASSIVE`` in the
  environment, as ``python -m moca_rt.infer`` sets it), every CPU this process may run on; with
  spinning waits (OpenMP's default), half of them, leaving cores to the decoder thread, the
  writers and the rest of the machine. At least 1 and at most 8 either way (on 2 cores: 2, or 1
  with spinning); ``MOCA_THREADS`` overrides it.
* :func:`configure_threads` applies a count: torch's intra-op threads, one inter-op thread (the
  pipeline runs one op at a time), and records it for engines that size their own pools
  (onnxruntime's ``intra_op_num_threads``: :func:`configured_threads`, used by
  :func:`moca_rt.build.build_pipeline`).
* ``python -m moca_rt.infer`` also sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the environment sets
  it) before torch loads OpenMP; that can only be done before ``import torch``, so a library
  caller who wants it sets the variable before starting Python.

The CLIs apply it once per run (``--threads``; ``run_infer`` restores torch's count after);
library callers may call :func:`configure_threads` or set ``torch.set_num_threads`` themselves
(nothing in the library changes it behind their back).
"""

from __future__ import annotations

import contextlib
import os

__all__ = [
    "THREADS_ENV",
    "configure_threads",
    "configured_threads",
    "default_threads",
    "passive_waits",
]

THREADS_ENV = "MOCA_THREADS"
_MAX_DEFAULT = 8
_configured: int | None = None


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def passive_waits() -> bool:
    """Whether OpenMP's idle workers sleep (``OMP_WAIT_POLICY=PASSIVE``) rather than spin."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def default_threads() -> int:
    """``MOCA_THREADS`` when set, else the available CPUs (half of them when OpenMP's workers
    spin-wait), clamped to [1, 8]."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            value = int(env)
        except ValueError as e:
            raise ValueError(f"{THREADS_ENV}: expected a whole number >= 1, got {env!r}") from e
        if value < 1:
            raise ValueError(f"{THREADS_ENV}: expected a whole number >= 1, got {env!r}")
        return value
    cpus = available_cpus() if passive_waits() else available_cpus() // 2
    return max(1, min(_MAX_DEFAULT, cpus))


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
