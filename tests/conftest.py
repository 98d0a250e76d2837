"""Shared test fixtures: fixture paths, device selection, and the Triton-interpreter child run."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from moca_rt.config import SAM_PRESETS
from moca_rt.modeling.sam import Sam, load_sam

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device; none is visible on this machine"
)


def _version_tuple(package: str) -> tuple[int, ...]:
    text = importlib.metadata.version(package)
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def interpreter_incompatibility() -> str | None:
    """Why the installed Triton interpreter cannot run here, or None.

    Triton before 3.7 converts one-element arrays with ``int()``, which numpy 2.4 made an
    error, so its interpreter fails on every kernel with numpy >= 2.4 (seen with Triton 3.6.0,
    the GPU machine's version: numpy 2.3.5 works, 2.4.6 fails). Compiled kernels are unaffected.
    """
    triton_v, numpy_v = _version_tuple("triton"), _version_tuple("numpy")
    if triton_v < (3, 7) and numpy_v >= (2, 4):
        return (
            f"the Triton {'.'.join(map(str, triton_v))} interpreter cannot run with numpy "
            f"{'.'.join(map(str, numpy_v))} (needs Triton >= 3.7 or numpy < 2.4)"
        )
    return None


def run_in_interpreter_child(
    test_file: str | Path,
    keyword: str | None = None,
    *,
    exit_first: bool = False,
    all_passed: bool = False,
    timeout: float = 600.0,
) -> str:
    """Run ``test_file`` in a fresh child pytest with ``TRITON_INTERPRET=1``; return its summary.

    Triton interprets on CPU only when the variable is set before triton is first imported in a
    process, so Triton-interpreter tests run in a child process (``MOCA_RT_KERNELS`` unset, so
    the automatic backend choice is tested). Skips when triton is not installed (found without
    importing it). Asserts that the child exits 0 and that its last line (the pytest summary,
    returned) reports passed tests.

    Args:
        test_file: the test module to run (usually ``__file__``).
        keyword: pytest ``-k`` expression selecting the child's tests; None runs the whole file.
        exit_first: pass ``-x`` (stop at the first failure).
        all_passed: also assert that the summary reports no skipped and no failed tests.
        timeout: seconds before the child is killed (``subprocess.TimeoutExpired``).
    """
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    reason = interpreter_incompatibility()
    if reason is not None:
        pytest.skip(reason)
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("MOCA_RT_KERNELS", None)
    path = Path(test_file).resolve()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if exit_first:
        cmd.append("-x")
    if keyword is not None:
        cmd += ["-k", keyword]
    cmd.append(str(path))
    proc = subprocess.run(
        cmd,
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    assert " passed" in summary, tail
    if all_passed:
        assert "skipped" not in summary and "failed" not in summary, tail
    return summary


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """One local Ray cluster with 2 CPUs for the batch and serving tests (started on first use,
    shut down at the end of the session). Skips only where Ray is not installed (CI installs
    moca-rt[ray], so there the tests run)."""
    ray = pytest.importorskip("ray", reason="needs moca-rt[ray] (CI installs it)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def sam_model() -> Sam:
    """The ``sam_test`` preset with the fixture weights (``fixtures/sam``)."""
    torch.set_num_threads(2)
    return load_sam(FIXTURES / "sam" / "weights.safetensors", SAM_PRESETS["sam_test"])


@pytest.fixture(scope="module")
def sam_embedding() -> torch.Tensor:
    """The reference encoder output of the fixture image (our encoder is tested in test_sam)."""
    return load_file(str(FIXTURES / "sam" / "encoder.safetensors"))["encoder_output"]
