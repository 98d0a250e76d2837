"""The CUDA C sources build with CMake (shared library + ctest smoke test) and compile as
device-only code the way CuPy's NVRTC sees them (skipped where cmake or nvcc is missing); the
Triton kernels compile ahead of time for sm_90 without a GPU and do not spill registers.

One architecture only (sm_80) to keep the build near 30 s; the project default is "80;90".
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moca_rt.kernels.kmeans import kmeanspp_random_table

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "kernels" / "csrc"
CMAKE = shutil.which("cmake")
NVCC = shutil.which("nvcc")
needs_toolchain = pytest.mark.skipif(
    CMAKE is None or NVCC is None, reason="needs cmake and nvcc on PATH"
)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert CMAKE is not None
    out = tmp_path_factory.mktemp("cmake_build")
    cmd = [CMAKE, "-S", str(ROOT), "-B", str(out), "-DCMAKE_CUDA_ARCHITECTURES=80"]
    if shutil.which("ninja"):
        cmd += ["-G", "Ninja"]
    _run(cmd, ROOT)
    _run([CMAKE, "--build", str(out), "-j", "2"], ROOT)
    return out


@needs_toolchain
def test_cmake_builds_library_and_smoke_test(build_dir: Path) -> None:
    assert (build_dir / "libmoca_rt_kernels.so").is_file()
    assert (build_dir / "moca_rt_kernels_smoke").is_file()
    cache = (build_dir / "CMakeCache.txt").read_text()
    assert "MOCA_RT_BUILD_TRT_PLUGIN:BOOL=OFF" in cache
    smoke = subprocess.run(
        [str(build_dir / "moca_rt_kernels_smoke")], capture_output=True, text=True, timeout=120
    )
    ctest = subprocess.run(
        ["ctest", "--test-dir", str(build_dir), "--output-on-failure"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if torch.cuda.is_available():
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        assert "smoke test passed" in smoke.stdout
        assert ctest.returncode == 0, ctest.stdout
    else:
        assert smoke.returncode == 77 and "skipped: no GPU" in smoke.stdout
        assert ctest.returncode == 0 and "Skipped" in ctest.stdout, ctest.stdout


@needs_toolchain
def test_host_random_table_matches_python(build_dir: Path) -> None:
    lib = ctypes.CDLL(str(build_dir / "libmoca_rt_kernels.so"))
    fn = lib.moca_kmeanspp_random_table
    fn.argtypes = [ctypes.c_uint64, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int32)]
    fn.restype = None
    for seed, b, k in ((0, 3, 4), (2**40 + 17, 5, 16), (7, 1, 1)):
        out = torch.empty(b, k, dtype=torch.int32)
        fn(seed, b, k, ctypes.cast(out.data_ptr(), ctypes.POINTER(ctypes.c_int32)))
        assert torch.equal(out, kmeanspp_random_table(seed, b, k, "cpu")), (seed, b, k)


@needs_toolchain
def test_sources_compile_as_nvrtc_device_code(tmp_path: Path) -> None:
    assert NVCC is not None
    for name in ("kmeans.cu", "mask_iou.cu"):
        ptx = tmp_path / (name + ".ptx")
        _run(
            [
                NVCC,
                "-std=c++17",
                "-DMOCA_RT_NVRTC",
                f"-I{CSRC}",
                "-arch=compute_80",
                "--ptx",
                str(CSRC / name),
                "-o",
                str(ptx),
            ],
            tmp_path,
        )
        text = ptx.read_text()
        entries = {
            "kmeans.cu": ["moca_kmeans_f32", "moca_kmeans_f16", "moca_kmeans_bf16"],
            "mask_iou.cu": ["moca_mask_match_u8_kernel"],
        }[name]
        for entry in entries:
            assert f".entry {entry}(" in text, f"{entry} missing from {name} PTX"
        assert "moca_cosine_kmeans" not in text and "moca_mask_match_u8(" not in text


AOT_SCRIPT = r"""
from moca_rt.kernels import aot
problems = []
for spec in aot.all_specs():
    rep = aot.compile_spec(spec)
    print("compiled", rep)
    problems += rep.problems()
print("problems", problems)
"""


@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="needs triton (ahead-of-time compile)"
)
def test_triton_kernels_compile_for_sm90_without_spills(tmp_path: Path) -> None:
    """Every Triton kernel at every configuration its launcher uses at the real shapes
    (``aot_specs()`` of each kernel module) compiles for sm_90 with no register spills and
    within the 227 KiB of shared memory an H100 block can have."""
    # A child process: importing triton here in compiled mode would fix that mode for the
    # rest of this pytest process (see tests/test_kernels_kmeans.py).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")
    proc = subprocess.run(
        [sys.executable, "-c", AOT_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    compiled = [line for line in proc.stdout.splitlines() if line.startswith("compiled")]
    names = " ".join(compiled)
    for kernel in ("kmeans", "mask_iou", "mask_coverage", "pma_fwd", "pma_bwd"):
        assert f"name='{kernel}" in names, f"no {kernel} spec compiled:\n{proc.stdout}"
    assert proc.stdout.rstrip().endswith("problems []"), proc.stdout[-4000:]


def test_benchmark_harness_runs_on_cpu(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_kernels", ROOT / "benchmarks" / "kernels.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_kernels"] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    rows = bench.run_benchmarks("cpu", ["kmeans", "iou"], ["float32"], 0, 2, small=True)
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["impl"] for r in ok} >= {"torch_reference", "torch_fast"}
    for r in ok:
        assert r["median_ms"] > 0 and r["p99_ms"] >= r["median_ms"] and r["floor_mb"] > 0
    kmeans_floor = next(r["floor_mb"] for r in ok if r["op"] == "kmeans" and "B=1 " in r["config"])
    assert kmeans_floor == pytest.approx(1 * 64 * 128 * 4 * 5 / 1e6)  # B N D itemsize iters
    assert all(r["status"].startswith("skipped") for r in rows if r["impl"] in ("triton", "cupy"))
    out = tmp_path / "rows.csv"
    bench.write_csv(rows, out)
    header = out.read_text().splitlines()[0].split(",")
    assert header == bench.COLUMNS


def test_target_report_checks_the_issue_targets() -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_kernels", ROOT / "benchmarks" / "kernels.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_kernels"] = bench
    spec.loader.exec_module(bench)

    def row(op: str, impl: str, median: float, **kw: object) -> dict[str, object]:
        return {
            "op": op,
            "impl": impl,
            "dtype": "float32",
            "config": "c",
            "status": "ok",
            "median_ms": median,
            **kw,
        }

    rows = [
        row("pma_fwd_bwd", "torch_fast", 3.0, peak_extra_mib=40.0),
        row("pma_fwd_bwd", "triton", 1.0, peak_extra_mib=12.0),  # 3x: pass; 0.3: fail
        row("kmeans", "torch_reference", 50.0, floor_fraction=float("nan")),
        row("kmeans", "triton", 4.0, floor_fraction=0.5),  # 12.5x: pass; 2x floor: pass
        row("kmeans", "cupy", 6.0, floor_fraction=0.25),  # 8.3x: fail; 4x floor: fail
        row("mask_iou", "torch_reference", 1.0),
        row("mask_iou", "triton", 1.25),  # slower: fail
        {**row("kmeans", "triton_tf32x3", 1.0), "status": "error: boom"},  # ignored
    ]
    lines = bench.target_report(rows)
    assert len(lines) == 7, lines
    verdicts = [line.split()[0] for line in lines]
    assert verdicts == ["PASS", "FAIL", "PASS", "PASS", "FAIL", "FAIL", "FAIL"], lines
    assert "3.00x faster than torch_fast" in lines[0] and "0.300 of torch_fast" in lines[1]
    assert "12.5x faster than the per-frame torch loop" in lines[2]
    assert "2.00x the bytes floor" in lines[3] and "4.00x the bytes floor" in lines[5]
