"""The CUDA C sources build with CMake (shared library + ctest smoke test) and compile as
device-only code the way CuPy's NVRTC sees them. Skipped where cmake or nvcc is missing.

One architecture only (sm_80) to keep the build near 30 s; the project default is "80;90".
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
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
