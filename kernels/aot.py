"""Ahead-of-time compile checks for the Triton kernels, without a GPU.

The Triton interpreter (``TRITON_INTERPRET=1``) proves a kernel's arithmetic but not that it
compiles for a real GPU, nor that it fits one: register spills, and shared memory beyond what an
SM offers, only show up in the compiled code. This module compiles a kernel for a chosen target
(default sm_90, H100/H200) with Triton's own ``ptxas`` and reports registers, spill bytes and
shared memory. Each kernel module lists, in ``aot_specs()``, the exact launch configurations its
launchers pick at the project's real shapes (same config functions as the launchers), so a test
can check every one of them here.

    python -m moca_rt.kernels.aot            # table of every spec, exit 1 on a failing one

Must run in a process where triton was imported without ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SM90_MAX_SHARED_BYTES = 232448  # 227 KiB: the opt-in shared memory per block on sm_90
SM90_MAX_REGISTERS = 255


@dataclass(frozen=True)
class KernelSpec:
    """One Triton kernel at one launch configuration.

    name: label for reports (kernel, dtype and the shape it serves). fn: the ``triton.jit``
    function (compiled mode). arg_types: Triton type of every run-time argument (``"*fp32"``,
    ``"i32"``, ``"fp32"``...). constexprs: values of the ``constexpr`` arguments. Together they
    must name every argument of ``fn`` (:meth:`signature`). num_warps, num_stages: the launch
    options the launcher uses (``None`` stages: Triton's default).
    """

    name: str
    fn: Any
    arg_types: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    divisible: tuple[str, ...] = ()

    def signature(self) -> dict[str, str]:
        """Triton's signature: every argument of ``fn`` in order, ``"constexpr"`` for the
        constexprs. ``ValueError`` naming arguments that neither dict gives."""
        names = list(self.fn.arg_names)
        missing = [n for n in names if n not in self.arg_types and n not in self.constexprs]
        if missing:
            raise ValueError(f"expected a type or constexpr value for {missing} ({self.name})")
        return {n: "constexpr" if n in self.constexprs else self.arg_types[n] for n in names}


@dataclass(frozen=True)
class CompileReport:
    """Resources of one compiled spec: registers per thread, spill bytes, shared memory bytes."""

    name: str
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    shared_bytes: int

    def problems(self, max_shared: int = SM90_MAX_SHARED_BYTES) -> list[str]:
        """Why this kernel would not run well (spills) or at all (shared memory); [] if fine."""
        out = []
        if self.spill_store_bytes or self.spill_load_bytes:
            out.append(
                f"{self.name}: spills registers ({self.spill_store_bytes} B stores, "
                f"{self.spill_load_bytes} B loads)"
            )
        if self.shared_bytes > max_shared:
            out.append(f"{self.name}: needs {self.shared_bytes} B shared memory > {max_shared} B")
        return out


def _ptxas() -> Path:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not path.is_file():
        raise FileNotFoundError(f"expected Triton's bundled ptxas at {path}, found none")
    return path


def compile_spec(spec: KernelSpec, arch: int = 90) -> CompileReport:
    """Compile ``spec`` for ``sm_<arch>`` and read its resources from ``ptxas -v``."""
    import triton
    from triton.backends.compiler import GPUTarget

    options: dict[str, Any] = {"num_warps": spec.num_warps, **spec.options}
    if spec.num_stages is not None:
        options["num_stages"] = spec.num_stages
    signature = spec.signature()
    unknown = [name for name in spec.divisible if signature.get(name, "*")[0] in "*c"]
    if unknown:
        raise ValueError(f"expected integer arguments in divisible, got {unknown} ({spec.name})")
    names = list(signature)
    hinted = [n for n, t in signature.items() if t.startswith("*")] + list(spec.divisible)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in hinted}
    src = triton.compiler.ASTSource(
        fn=spec.fn, signature=signature, constexprs=spec.constexprs, attrs=attrs
    )
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    suffix = "a" if arch >= 90 else ""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as fh:
        fh.write(kernel.asm["ptx"])
        fh.flush()
        proc = subprocess.run(
            [str(_ptxas()), f"-arch=sm_{arch}{suffix}", "-v", fh.name, "-o", "/dev/null"],
            capture_output=True,
            text=True,
            check=True,
        )
    log = proc.stderr
    regs = [int(v) for v in re.findall(r"Used (\d+) registers", log)]
    return CompileReport(
        name=spec.name,
        registers=max(regs) if regs else 0,
        spill_store_bytes=sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", log)),
        spill_load_bytes=sum(int(v) for v in re.findall(r"(\d+) bytes spill loads", log)),
        shared_bytes=int(kernel.metadata.shared),
    )


def all_specs() -> list[KernelSpec]:
    """Every Triton kernel of the package at the configurations its launchers use."""
    specs: list[KernelSpec] = []
    # By module path: the package re-exports a function named mask_iou over the module's name.
    for module in ("kmeans", "mask_iou", "pma_triton"):
        specs += importlib.import_module(f"{__package__}.{module}").aot_specs()
    return specs


def main() -> int:
    failures: list[str] = []
    print(f"{'kernel':60s} {'regs':>5s} {'spill':>6s} {'shared':>7s}")
    for spec in all_specs():
        rep = compile_spec(spec)
        print(f"{rep.name:60s} {rep.registers:5d} {rep.spill_store_bytes:6d} {rep.shared_bytes:7d}")
        failures += rep.problems()
    for line in failures:
        print("FAIL", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
