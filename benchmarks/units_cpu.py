"""One export unit on every CPU engine: eager torch vs onnxruntime vs torch.compile (issue #11).

    python benchmarks/units_cpu.py --unit vision --preset moca_huge --threads 2 --repeats 5
    python benchmarks/units_cpu.py --unit audio --preset moca_huge --audio-clips 1
    python benchmarks/units_cpu.py --unit sam_encoder --sam-preset sam_vit_b
    python benchmarks/units_cpu.py --unit vision --preset moca_test --repeats 3   # minutes: tiny

The unit (``audio``: ImageBind audio encoder, ``--audio-clips`` clips per window; ``vision``:
ImageBind vision with the AdaAV adapters, audio tokens from the audio encoder on random fbank;
``sam_encoder``: SAM's image encoder) is built with seeded random weights
(``moca_rt.export.create_onnx.build_model``: random adapters too, so the audio tokens reach the
vision graph) and fed ``example_inputs`` at ``--batch``. Engines (``--engines``):

* ``eager``: the export wrapper in torch, ``no_grad`` (the reference of every comparison);
* ``onnxruntime``: our export of the unit (``export_unit``, fp32), an ``OrtEngine`` session with
  graph optimisation level ALL, ``intra_op_num_threads`` = ``--threads``, spinning off (as the
  pipeline runs it); the export time is reported apart;
* ``torch-compile``: ``CompiledEngine`` (inductor, static shapes at this batch);
* ``torch-compile-freezing``: the same with inductor's ``freezing`` (weights folded into the
  graph as constants and prepacked for its CPU matmul kernels).

Each engine's first call is timed apart (``first_call_s``: compile for the compiled engines,
session warm-up for onnxruntime). Then ``--repeats`` rounds call every engine once in turn
(interleaved, so a change of machine load hits all of them alike); the rows hold the median and
the spread. Outputs are checked against eager with ``moca_rt.export.compare`` (fp32 gate:
rel <= 1e-4, cosine >= 0.99999). Memory: ``call_peak_mib`` is the peak resident set during one
call above the resident set before it (``/proc/self/clear_refs``, which also resets what
``getrusage`` reports, so the whole process's peak is for ``/usr/bin/time -v`` to say: the
eager model, the exports and the sessions all live in one process; memory an engine keeps
between calls, such as onnxruntime's arena, is not in ``call_peak_mib``).
``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it, as ``python -m moca_rt.infer``
runs; the load average is recorded (other jobs share the cores).

Rows are appended to ``--out`` (CSV, default ``benchmarks/results/units_cpu.csv``) and the whole
CSV is rendered to the ``.md`` beside it.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import read_rows
from proposals import peak_kib, reset_peak_kib

from moca_rt.config import MOCA_PRESETS, SAM_PRESETS
from moca_rt.engines import names
from moca_rt.provenance import git_commit
from moca_rt.threads import configure_threads

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
UNITS = ("audio", "vision", "sam_encoder")
ENGINES = ("eager", "onnxruntime", "torch-compile", "torch-compile-freezing")
Feeds = Mapping[str, torch.Tensor]
Runner = Callable[[Feeds], dict[str, torch.Tensor]]


def build_runners(
    unit: str, model: Any, engines: Sequence[str], threads: int, folder: Path, clips: int
) -> tuple[dict[str, Runner], dict[str, float]]:
    """``{engine: runner}`` of ``unit`` and ``{engine: seconds to set it up}`` (the export)."""
    from moca_rt.engines.base import TorchEngine
    from moca_rt.engines.compiled import CompiledEngine, CompileOptions
    from moca_rt.export.create_onnx import export_unit, num_layers_of
    from moca_rt.export.wrappers import build_wrapper

    name = cast(names.Unit, unit)
    layers = num_layers_of(model)
    ins, outs = names.input_names(name, layers), names.output_names(name, layers)
    runners: dict[str, Runner] = {}
    setup_s: dict[str, float] = {}
    for engine in engines:
        start = time.perf_counter()
        if engine == "eager":
            runners[engine] = TorchEngine(build_wrapper(name, model), ins, outs)
        elif engine == "onnxruntime":
            from moca_rt.engines.ort import OrtEngine

            path = folder / f"{unit}_fp32.onnx"
            export_unit(name, model, path, "fp32", audio_clips=clips)
            runners[engine] = OrtEngine(
                path, input_names=ins, output_names=outs, intra_op_threads=threads
            )
        else:
            options = CompileOptions(freezing=engine.endswith("freezing"))
            runners[engine] = CompiledEngine(build_wrapper(name, model), ins, outs, "cpu", options)
        setup_s[engine] = time.perf_counter() - start
    return runners, setup_s


def _call_peak_mib(run: Runner, feeds: Feeds) -> float:
    before = reset_peak_kib()
    run(feeds)
    return (peak_kib() - before) / 1024.0


def measure(runners: Mapping[str, Runner], feeds: Feeds, repeats: int) -> dict[str, dict[str, Any]]:
    """First call, interleaved timed calls, output check against ``eager`` and memory, per
    engine (``runners`` must hold ``eager``)."""
    from moca_rt.export.compare import compare_outputs

    found: dict[str, dict[str, Any]] = {e: {} for e in runners}
    outputs: dict[str, dict[str, torch.Tensor]] = {}
    for engine, run in runners.items():
        start = time.perf_counter()
        outputs[engine] = run(feeds)
        found[engine]["first_call_s"] = time.perf_counter() - start
    times: dict[str, list[float]] = {e: [] for e in runners}
    for _ in range(repeats):
        for engine, run in runners.items():
            start = time.perf_counter()
            run(feeds)
            times[engine].append((time.perf_counter() - start) * 1e3)
    eager_ms = statistics.median(times["eager"])
    for engine, run in runners.items():
        report = compare_outputs(outputs["eager"], outputs[engine], "fp32")
        worst = max(report.outputs, key=lambda o: o.rel)
        found[engine].update(
            ms_p50=statistics.median(times[engine]),
            ms_min=min(times[engine]),
            ms_max=max(times[engine]),
            ratio_vs_eager=statistics.median(times[engine]) / eager_ms,
            outputs_pass=report.passed,
            worst_output=worst.name,
            worst_rel=worst.rel,
            worst_cosine=worst.cosine,
            call_peak_mib=_call_peak_mib(run, feeds),
        )
    return found


def run_units(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows of one unit on every engine of ``args.engines`` (see the module docstring)."""
    from moca_rt.export.create_onnx import build_model, example_inputs

    threads = configure_threads(args.threads)
    load_start = os.getloadavg()[0]
    torch.manual_seed(0)
    model = build_model(args.unit, args.preset, args.sam_preset, "fp32", seed=args.seed)
    feeds = example_inputs(
        args.unit, model, args.batch, precision="fp32", seed=1, audio_clips=args.audio_clips
    )
    engines = ["eager", *[e for e in args.engines if e != "eager"]]
    with tempfile.TemporaryDirectory(prefix="moca_units_") as tmp:
        runners, setup_s = build_runners(
            args.unit, model, engines, threads, Path(tmp), args.audio_clips
        )
        found = measure(runners, feeds, args.repeats)
    common = {
        "timestamp_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git_commit(short=True, dirty_paths=("moca_rt", "benchmarks"), root=REPO),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "unit": args.unit,
        "preset": args.sam_preset if args.unit == "sam_encoder" else args.preset,
        "batch": args.batch,
        "audio_clips": args.audio_clips if args.unit != "sam_encoder" else None,
        "repeats": args.repeats,
        "weights": f"random (seed {args.seed})",
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg()[0],
    }
    return [
        {**common, "engine": e, "setup_s": setup_s[e], **found[e], "status": "ok"} for e in engines
    ]


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return ""


_WHAT = ("unit", "preset", "batch", "engine")
_SPEED = ("ms_p50", "ratio_vs_eager", "first_call_s", "setup_s")
_CHECKS = ("worst_rel", "outputs_pass", "call_peak_mib")
MD_COLUMNS = (*_WHAT, *_SPEED, *_CHECKS, "threads", "loadavg_end", "timestamp_utc")


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """``rows`` as CSV (columns in first-seen order, floats to 4 significant digits)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()})


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Every row as a Markdown table of :data:`MD_COLUMNS` (numbers to 4 significant digits;
    ``setup_s`` is the export time of the onnxruntime rows, ``first_call_s`` the compile time of
    the compiled ones)."""

    def cell(value: Any) -> str:
        if value is None or value == "":
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(MD_COLUMNS) + " |", "|" + " --- |" * len(MD_COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in MD_COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/units_cpu.py", description=__doc__)
    p.add_argument("--unit", choices=UNITS, required=True, help="The export unit to time.")
    p.add_argument("--preset", choices=sorted(MOCA_PRESETS), default="moca_huge")
    p.add_argument("--sam-preset", choices=sorted(SAM_PRESETS), default="sam_vit_b")
    p.add_argument("--batch", type=int, default=1, help="Images or audio windows per call.")
    p.add_argument("--audio-clips", type=int, default=1, help="Clips per audio window.")
    p.add_argument("--engines", default=",".join(ENGINES), help="Comma-separated engines.")
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads.")
    p.add_argument("--repeats", type=int, default=5, help="Interleaved timed calls per engine.")
    p.add_argument("--seed", type=int, default=0, help="The seed of the random weights.")
    p.add_argument("--out", type=Path, default=RESULTS / "units_cpu.csv")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in args.engines if e not in ENGINES]
    if bad or args.batch < 1 or args.repeats < 1 or args.audio_clips < 1:
        print(
            f"error: expected engines from {list(ENGINES)} and batch, repeats, audio clips "
            f">= 1, got {args.engines}, {args.batch}, {args.repeats}, {args.audio_clips}",
            file=sys.stderr,
        )
        return 2
    rows = run_units(args)
    old = read_rows(args.out) if args.out.is_file() else []
    write_csv([*old, *rows], args.out)
    args.out.with_suffix(".md").write_text(markdown(read_rows(args.out)) + "\n")
    print(markdown(rows))
    print(f"appended {len(rows)} rows to {args.out} (table: {args.out.with_suffix('.md')})")
    return 0 if all(r["outputs_pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
