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
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
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
            [NVCC, "-std=c++17", "-DMOCA_RT_NVRTC", f"-I{CSRC}", "-arch=compute_80", "--ptx",
             str(CSRC / name), "-o", str(ptx)],
            tmp_path,
        )  # fmt: skip
        text = ptx.read_text()
        entries = {"kmeans.cu": ["moca_kmeans_f32", "moca_kmeans_f16", "moca_kmeans_bf16"],
                   "mask_iou.cu": ["moca_mask_match_u8_kernel"]}[name]  # fmt: skip
        for entry in entries:
            assert f".entry {entry}(" in text, f"{entry} missing from {name} PTX"
        assert "moca_cosine_kmeans" not in text and "moca_mask_match_u8(" not in text


AOT_SCRIPT = r"""
import importlib, re, subprocess, sys, tempfile
from pathlib import Path
import triton
from triton.backends.compiler import GPUTarget
km = importlib.import_module("moca_rt.kernels.kmeans")
mi = importlib.import_module("moca_rt.kernels.mask_iou")
ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
target = GPUTarget("cuda", 90, 32)
km_sig = {"x_ptr": "*bf16", "rand_ptr": "*i32", "cent_ptr": "*fp32", "labels_ptr": "*i64",
          "iters_ptr": "*i32", "N": "i32", "D": "i32", "K": "i32", "max_iters": "i32",
          "stride_xb": "i32", "stride_xn": "i32", "EARLY_STOP": "constexpr",
          "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "BLOCK_D": "constexpr"}
mi_sig = {"p_ptr": "*u8", "c_ptr": "*u8", "out_ptr": "*fp32", "P": "i32", "K": "i32",
          "HW": "i32", "threshold": "fp32", "P_FLOAT": "constexpr", "C_FLOAT": "constexpr",
          "COVERAGE": "constexpr", "BLOCK_P": "constexpr", "BLOCK_K": "constexpr",
          "BLOCK_HW": "constexpr"}
cases = [
    ("kmeans", km._triton_kernel(False), km_sig, {"EARLY_STOP": True, "BLOCK_N": 256,
     "BLOCK_K": 16, "BLOCK_D": 16}, 8),
    ("mask_iou", mi._triton_kernel(False), mi_sig, {"P_FLOAT": False, "C_FLOAT": False,
     "COVERAGE": False, "BLOCK_P": 16, "BLOCK_K": 16, "BLOCK_HW": 256}, 8),
]
for name, fn, sig, consts, warps in cases:
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts)
    ptx = triton.compile(src, target=target, options={"num_warps": warps}).asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as fh:
        fh.write(ptx)
        fh.flush()
        out = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", fh.name, "-o", "/dev/null"],
                             capture_output=True, text=True, check=True).stderr
    spills = [int(v) for v in re.findall(r"(\d+) bytes spill stores", out)]
    print(name, "spill stores", spills)
    if any(spills):
        sys.exit(f"{name} spills registers: {out}")
"""


@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="needs triton (ahead-of-time compile)"
)
def test_triton_kernels_compile_for_sm90_without_spills(tmp_path: Path) -> None:
    # A child process: importing triton here in compiled mode would fix that mode for the
    # rest of this pytest process (see tests/test_kernels_kmeans.py).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")
    proc = subprocess.run(
        [sys.executable, "-c", AOT_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stdout.count("spill stores [0]") == 2, proc.stdout


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
