"""Kernel benchmark: cosine k-means, mask IoU and PMA cost, every implementation at real shapes.

    python benchmarks/kernels.py --device cuda [--dtypes float32,bfloat16] [--ops kmeans,iou,pma]
    python benchmarks/kernels.py --device cpu     # small shapes: proves the harness runs

Each op has a setup factory (inputs at one configuration) and named implementations
(``torch_reference``, ``torch_fast``, ``triton``, ``cupy``). Per row: the first call is timed
apart (Triton JIT / NVRTC compile, autotuning, caches), then ``--warmup`` calls, then ``--reps``
timed calls, each bracketed by a device sync; median and p99 in ms. Peak memory is
``torch.cuda.max_memory_allocated`` during one call minus what was allocated before it (the
inputs) and minus the outputs. k-means runs a fixed number of iterations (early stop off); its
bytes floor is one read of the features per iteration, ``B N D itemsize iters``; IoU's is one read
of both mask stacks; the achieved fraction is floor bytes / median time / peak DRAM bandwidth
(known for A100/H100/H200, else ``--peak-gbps``). Rows (device name, torch/triton/cupy versions,
dtype, config) go to ``benchmarks/results/kernels_<device>.csv``; a plot is written next to it
when matplotlib is installed. Triton on CPU needs ``--interpret`` (``TRITON_INTERPRET=1``;
timings then mean nothing).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
PEAK_GBPS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100": 2039.0}
COLUMNS = [
    "op",
    "impl",
    "device",
    "device_name",
    "torch",
    "triton",
    "cupy",
    "dtype",
    "config",
    "first_call_ms",
    "median_ms",
    "p99_ms",
    "reps",
    "peak_extra_mib",
    "floor_mb",
    "achieved_gbps",
    "floor_fraction",
    "status",
]


@dataclass
class Case:
    """One op at one configuration: ``inputs`` built by the setup factory, ``impls`` by name."""

    op: str
    config: str
    dtype: str
    inputs: dict[str, Any]
    impls: dict[str, Callable[[], Any]]
    floor_bytes: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)
    held_bytes: Callable[[], int] | None = None  # after a call: bytes every impl must hold too


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def _cupy_version() -> str:
    return _version("cupy-cuda12x") or _version("cupy-cuda13x") or _version("cupy")


def _tensor_bytes(obj: Any) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, tuple | list):
        return sum(_tensor_bytes(o) for o in obj)
    return 0


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def measure(
    fn: Callable[[], Any],
    device: str,
    warmup: int,
    reps: int,
    held_bytes: Callable[[], int] | None = None,
) -> dict[str, float]:
    """First-call time, then median / p99 over ``reps`` synced calls, and peak extra memory.

    Peak extra memory (CUDA only): the peak allocated during one call, minus what was allocated
    before it (the inputs), the outputs' bytes and ``held_bytes()`` read after the call (the
    gradients of a forward + backward): the memory an implementation needs beyond what every
    implementation must hold.
    """
    import numpy as np
    import torch

    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    first = (time.perf_counter() - t0) * 1e3
    out_bytes = _tensor_bytes(out)
    del out
    for _ in range(warmup):
        fn()
    peak = float("nan")
    if device == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        _sync(device)
        held = held_bytes() if held_bytes is not None else 0
        peak = (torch.cuda.max_memory_allocated() - base - out_bytes - held) / 2**20
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    arr = np.asarray(times)
    return {
        "first_call_ms": first,
        "median_ms": float(np.median(arr)),
        "p99_ms": float(np.percentile(arr, 99)),
        "peak_extra_mib": peak,
    }


# ------------------------------------------------------------------------------------------
# Setup factories


def _dt(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _backends_available(device: str) -> tuple[bool, bool]:
    from moca_rt.kernels.dispatch import cupy_available, triton_available, triton_interpreting

    triton_ok = triton_available() and (device == "cuda" or triton_interpreting())
    return triton_ok, device == "cuda" and cupy_available()


def kmeans_cases(device: str, dtype: str, small: bool) -> Iterable[Case]:
    import torch

    from moca_rt.kernels import kmeans as km

    triton_ok, cupy_ok = _backends_available(device)
    n, d, iters = (64, 128, 5) if small else (256, 1280, 20)
    batches, ks = ((1, 2), (4,)) if small else ((1, 8, 64), (4, 8, 16))
    for b in batches:
        for k in ks:
            g = torch.Generator().manual_seed(b * 100 + k)
            x = torch.randn(b, n, d, generator=g).to(_dt(dtype)).to(device)
            kw: dict[str, Any] = {"max_iters": iters, "seed": 0, "early_stop": False}
            impls: dict[str, Callable[[], Any]] = {
                "torch_fast": partial(km.cosine_kmeans_torch_fast, x, k, **kw)
            }
            skipped = {}
            if b <= 8:
                impls["torch_reference"] = partial(km.cosine_kmeans_reference, x, k, **kw)
            else:
                skipped["torch_reference"] = "skipped: per-frame loop, B > 8"
            if triton_ok:
                impls["triton"] = partial(km.cosine_kmeans_triton, x, k, **kw)
                impls["triton_tf32x3"] = partial(
                    km.cosine_kmeans_triton, x, k, dot_precision="tf32x3", **kw
                )
                if dtype != "float32":  # half inputs launch unpipelined to avoid spills
                    piped = km.TritonKMeansConfig(256, max(16, k), 16, 8, num_stages=3)
                    impls["triton_pipelined"] = partial(
                        km.cosine_kmeans_triton, x, k, config=piped, **kw
                    )
            else:
                skipped["triton"] = "skipped: Triton cannot run on this device"
            if cupy_ok:
                from moca_rt.kernels.cupy_kmeans import cosine_kmeans_cupy

                impls["cupy"] = partial(cosine_kmeans_cupy, x, k, **kw)
            else:
                skipped["cupy"] = "skipped: CuPy cannot run here"
            yield Case(
                "kmeans",
                f"B={b} N={n} D={d} K={k} iters={iters} early_stop=off",
                dtype,
                {"x": x},
                impls,
                floor_bytes=float(b * n * d * x.element_size() * iters),
                skipped=skipped,
            )


def iou_cases(device: str, dtype: str, small: bool) -> Iterable[Case]:
    import torch

    mi = importlib.import_module("moca_rt.kernels.mask_iou")
    triton_ok, cupy_ok = _backends_available(device)
    b, n_p, n_k, side = (1, 16, 4, 64) if small else (1, 256, 4, 256)
    g = torch.Generator().manual_seed(7)
    if dtype == "float32":  # bool masks (the pipeline's case); float rows use logits + threshold
        p = (torch.rand(b, n_p, side, side, generator=g) > 0.7).to(device)
        c = (torch.rand(b, n_k, side, side, generator=g) > 0.5).to(device)
        thr = None
        label = "bool"
    else:
        p = torch.randn(b, n_p, side, side, generator=g).to(_dt(dtype)).to(device)
        c = torch.randn(b, n_k, side, side, generator=g).to(_dt(dtype)).to(device)
        thr = 0.0
        label = dtype
    impls: dict[str, Callable[[], Any]] = {
        "torch_reference": lambda: mi.mask_iou_reference(p, c, threshold=thr)
    }
    skipped = {}
    if triton_ok:
        impls["triton"] = lambda: mi.mask_iou_triton(p, c, threshold=thr)
    else:
        skipped["triton"] = "skipped: Triton cannot run on this device"
    if cupy_ok:
        from moca_rt.kernels.cupy_mask_iou import mask_match_cupy

        impls["cupy"] = lambda: mask_match_cupy(p, c, threshold=thr)
    else:
        skipped["cupy"] = "skipped: CuPy cannot run here"
    yield Case(
        "mask_iou",
        f"B={b} P={n_p} K={n_k} {side}x{side}",
        label,
        {"p": p, "c": c},
        impls,
        floor_bytes=float(_tensor_bytes((p, c))),
        skipped=skipped,
    )


def pma_cases(device: str, dtype: str, small: bool) -> Iterable[Case]:
    import torch

    try:
        from moca_rt.kernels import pma
    except ImportError as err:
        yield Case("pma_fwd_bwd", "n/a", dtype, {}, {}, skipped={"all": f"skipped: {err}"})
        return
    triton_ok, _ = _backends_available(device)
    b, h, w, ch = (2, 8, 8, 64) if small else (8, 16, 16, 1280)
    gen = torch.Generator().manual_seed(3)
    f = torch.randn(b, h, w, ch, generator=gen).to(_dt(dtype)).to(device).requires_grad_(True)
    gg = torch.randn(b, h, w, ch, generator=gen).to(_dt(dtype)).to(device).requires_grad_(True)

    def fwd_bwd(fn: Callable[..., Any]) -> Callable[[], Any]:
        def run() -> Any:
            f.grad = None
            gg.grad = None
            res = fn(f, gg)
            res.cost.sum().backward()
            return res

        return run

    impls = {
        "torch_reference": fwd_bwd(pma.pma_cost_reference),
        "torch_fast": fwd_bwd(pma.pma_cost_torch_fast),
    }
    skipped = {}
    if triton_ok:
        impls["triton"] = fwd_bwd(pma.pma_cost_triton)
    else:
        skipped["triton"] = "skipped: Triton cannot run on this device"
    yield Case(
        "pma_fwd_bwd",
        f"B={b} {h}x{w}x{ch} row search D=W-1",
        dtype,
        {"f": f, "g": gg},
        impls,
        floor_bytes=float(2 * _tensor_bytes((f, gg))),
        skipped=skipped,
        held_bytes=lambda: _tensor_bytes((f.grad, gg.grad)),
    )


FACTORIES = {"kmeans": kmeans_cases, "iou": iou_cases, "pma": pma_cases}


# ------------------------------------------------------------------------------------------
# Runner


def device_info(device: str) -> tuple[str, float]:
    import platform

    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_GBPS.items() if k in name), float("nan"))
        return name, peak
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)", float(
        "nan"
    )


def run_benchmarks(
    device: str,
    ops: list[str],
    dtypes: list[str],
    warmup: int,
    reps: int,
    small: bool,
    peak_gbps: float | None = None,
) -> list[dict[str, Any]]:
    """Benchmark rows (dicts with the keys of ``COLUMNS``) for every op x dtype x impl."""
    import torch

    name, known_peak = device_info(device)
    peak = peak_gbps if peak_gbps is not None else known_peak
    common = {
        "device": device,
        "device_name": name,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cupy": _cupy_version(),
    }
    rows: list[dict[str, Any]] = []
    for op in ops:
        for dtype in dtypes:
            for case in FACTORIES[op](device, dtype, small):
                base = {**common, "op": case.op, "dtype": case.dtype, "config": case.config}
                for impl, status in case.skipped.items():
                    rows.append({**base, "impl": impl, "status": status})
                for impl, fn in case.impls.items():
                    row = {**base, "impl": impl, "floor_mb": case.floor_bytes / 1e6}
                    n_reps = max(1, reps // 10) if impl == "torch_reference" else reps
                    try:
                        stats = measure(fn, device, warmup, n_reps, case.held_bytes)
                    except Exception as err:  # a failing impl must not hide the others' rows
                        rows.append({**row, "status": f"error: {type(err).__name__}: {err}"[:300]})
                        continue
                    gbps = case.floor_bytes / (stats["median_ms"] * 1e-3) / 1e9
                    row.update(stats, reps=n_reps, status="ok", achieved_gbps=gbps)
                    if case.floor_bytes and peak == peak:  # NaN-safe
                        row["floor_fraction"] = gbps / peak
                    rows.append(row)
                    print(
                        f"{case.op:12s} {impl:16s} {case.dtype:9s} {case.config:40s} "
                        f"median {stats['median_ms']:9.3f} ms  p99 {stats['p99_ms']:9.3f} ms  "
                        f"first {stats['first_call_ms']:9.1f} ms",
                        flush=True,
                    )
    return rows


KERNEL_IMPLS = ("triton", "triton_tf32x3", "triton_pipelined", "cupy")


def _ok_rows(rows: list[dict[str, Any]], **match: str) -> list[dict[str, Any]]:
    return [
        r for r in rows if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items())
    ]


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def target_report(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's speed and memory targets, checked against benchmark rows, one line each.

    * PMA forward + backward: our kernel >= 3x faster than ``torch_fast`` (median) and at most
      1/4 of its peak extra memory.
    * k-means: >= 10x faster than ``torch_reference`` (the per-frame loop, where it ran) and
      within 3x of the bytes floor (``floor_fraction >= 1/3``; needs the device's peak
      bandwidth).
    * mask IoU: faster than ``torch_reference``.

    Only meaningful for ``--device cuda`` at the real shapes; every kernel implementation
    (``triton``, ``triton_tf32x3``, ``cupy``) present in the rows gets its own line.
    """
    lines = []
    for ref in _ok_rows(rows, op="pma_fwd_bwd", impl="torch_fast"):
        for impl in KERNEL_IMPLS:
            for r in _ok_rows(rows, op="pma_fwd_bwd", impl=impl, dtype=ref["dtype"]):
                speedup = ref["median_ms"] / r["median_ms"]
                ratio = r["peak_extra_mib"] / max(ref["peak_extra_mib"], 1e-9)
                lines.append(
                    f"{_verdict(speedup >= 3.0)} pma {impl} {r['dtype']}: {speedup:.2f}x faster "
                    f"than torch_fast (target >= 3)"
                )
                lines.append(
                    f"{_verdict(ratio <= 0.25)} pma {impl} {r['dtype']}: extra memory "
                    f"{r['peak_extra_mib']:.2f} MiB = {ratio:.3f} of torch_fast's "
                    f"{ref['peak_extra_mib']:.2f} MiB (target <= 0.25)"
                )
    for r in _ok_rows(rows, op="kmeans"):
        if r["impl"] not in KERNEL_IMPLS:
            continue
        what = f"kmeans {r['impl']} {r['dtype']} {r['config']}"
        for ref in _ok_rows(rows, op="kmeans", impl="torch_reference", dtype=r["dtype"]):
            if ref["config"] == r["config"]:
                speedup = ref["median_ms"] / r["median_ms"]
                lines.append(
                    f"{_verdict(speedup >= 10.0)} {what}: {speedup:.1f}x faster than the "
                    f"per-frame torch loop (target >= 10)"
                )
        frac = r.get("floor_fraction")
        if isinstance(frac, float) and frac == frac:
            lines.append(
                f"{_verdict(frac >= 1 / 3)} {what}: {1 / frac:.2f}x the bytes floor (target <= 3)"
            )
    for ref in _ok_rows(rows, op="mask_iou", impl="torch_reference"):
        for impl in KERNEL_IMPLS:
            for r in _ok_rows(rows, op="mask_iou", impl=impl, dtype=ref["dtype"]):
                speedup = ref["median_ms"] / r["median_ms"]
                lines.append(
                    f"{_verdict(speedup > 1.0)} mask_iou {impl} {r['dtype']}: {speedup:.2f}x "
                    f"faster than torch_reference (target > 1)"
                )
    return lines


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()}
            )


def write_plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Median latency per impl and config as a bar chart; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib)")
        return False
    ok = [r for r in rows if r.get("status") == "ok"]
    labels = sorted({f"{r['op']} {r['dtype']}\n{r['config']}" for r in ok})
    impls = sorted({r["impl"] for r in ok})
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 0.9), 5))
    width = 0.8 / max(len(impls), 1)
    for i, impl in enumerate(impls):
        vals = []
        for lab in labels:
            hit = [
                r
                for r in ok
                if r["impl"] == impl and f"{r['op']} {r['dtype']}\n{r['config']}" == lab
            ]
            vals.append(hit[0]["median_ms"] if hit else 0.0)
        ax.bar([j + i * width for j in range(len(labels))], vals, width, label=impl)
    ax.set_yscale("log")
    ax.set_ylabel("median ms (log)")
    ax.set_xticks([j + 0.4 for j in range(len(labels))], labels, rotation=90, fontsize=6)
    ax.set_title(f"moca_rt kernels on {ok[0]['device_name']}" if ok else "moca_rt kernels")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="Device to run on; cpu uses small shapes and only proves the harness.",
    )
    parser.add_argument("--ops", default="kmeans,iou,pma", help="Comma-separated ops to run.")
    parser.add_argument(
        "--dtypes",
        default="float32,bfloat16",
        help="Comma-separated dtypes (float32, bfloat16, float16).",
    )
    parser.add_argument("--warmup", type=int, default=5, help="Untimed calls after the first.")
    parser.add_argument("--reps", type=int, default=50, help="Timed calls per row.")
    parser.add_argument("--small", action="store_true", help="Small shapes on any device.")
    parser.add_argument(
        "--peak-gbps",
        type=float,
        default=None,
        help="Peak DRAM bandwidth for the floor fraction if the GPU is not known.",
    )
    parser.add_argument(
        "--interpret",
        action="store_true",
        help="Set TRITON_INTERPRET=1 so Triton runs on CPU (slow; timing is moot).",
    )
    parser.add_argument("--out", type=Path, default=None, help="CSV path (default results/).")
    args = parser.parse_args(argv)
    if args.interpret:
        if "triton" in sys.modules:
            parser.error("--interpret must be set before triton is imported")
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device is visible: run with --device cpu", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(1)  # steadier numbers on a shared machine
    small = args.small or args.device == "cpu"
    reps = min(args.reps, 5) if args.device == "cpu" else args.reps
    warmup = min(args.warmup, 1) if args.device == "cpu" else args.warmup
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in FACTORIES]
    if bad:
        parser.error(f"--ops must be among {sorted(FACTORIES)}, got {bad}")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    rows = run_benchmarks(args.device, ops, dtypes, warmup, reps, small, args.peak_gbps)
    out = args.out or RESULTS / f"kernels_{args.device}.csv"
    write_csv(rows, out)
    write_plot(rows, out.with_suffix(".png"))
    print(f"wrote {len(rows)} rows to {out}")
    report = target_report(rows)
    if args.device == "cuda" and not small:
        targets = out.with_name(out.stem + "_targets.txt")
        header = f"# targets of issue #4 on {rows[0]['device_name']} (from {out.name})\n"
        targets.write_text(header + "\n".join(report) + "\n")
        print("\n".join(report))
        print(f"wrote {targets}")
    else:
        print("targets are for --device cuda at the real shapes; not checked on this run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
