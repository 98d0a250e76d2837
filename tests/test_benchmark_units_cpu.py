"""benchmarks/units_cpu.py on the smallest unit: rows, the output check, the appended CSV/MD."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "units_cpu.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    pytest.importorskip("onnxruntime")
    spec = importlib.util.spec_from_file_location("bench_units_cpu", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_units_cpu"] = module
    spec.loader.exec_module(module)
    return module


def test_audio_unit_eager_vs_onnxruntime(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "units.csv"
    args = ["--unit", "audio", "--preset", "moca_test", "--engines", "onnxruntime"]
    args += ["--repeats", "2", "--threads", "1", "--out", str(out)]
    assert bench.main(args) == 0
    assert bench.main(args) == 0  # a second run appends
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["engine"] for r in rows] == ["eager", "onnxruntime"] * 2
    for r in rows:
        assert r["outputs_pass"] == "True" and float(r["worst_rel"]) <= 1e-4
        assert float(r["ms_p50"]) > 0 and float(r["call_peak_mib"]) >= 0
        assert r["unit"] == "audio" and r["preset"] == "moca_test" and r["audio_clips"] == "1"
    assert float(rows[0]["ratio_vs_eager"]) == 1.0
    table = out.with_suffix(".md").read_text().splitlines()
    assert len(table) == 2 + 4 and "| audio | moca_test | 1 | onnxruntime |" in table[-1]
    assert "appended 2 rows" in capsys.readouterr().out
    assert bench.main(["--unit", "audio", "--engines", "tensorrt", "--out", str(out)]) == 2
