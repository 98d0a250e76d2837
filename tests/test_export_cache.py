"""Reusing an ONNX export folder (``moca_rt.export_cache``) and ``--engine auto`` on the CPU.

A build on ``--engine onnxruntime`` without engine files exports the trunk into a folder and
records what it exported from (``export.json``); a second build with the same checkpoints,
settings and code reuses the files, anything else exports again. The ``moca_test`` trunk with
random weights (``--proposals none``) keeps each export to a few seconds.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from moca_rt import build, export_cache
from moca_rt.build import BuildSettings, build_pipeline, resolve_engine

SETTINGS = BuildSettings(
    preset="moca_test", proposals="none", random_weights=True, engine="onnxruntime", tau=-1.0
)


@pytest.fixture
def clean_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Code at a fixed commit with no local change (the working tree may be dirty while tested)."""
    monkeypatch.setattr(export_cache, "git_commit", lambda **_: "0123456789ab")


def _frames() -> tuple[list[np.ndarray], np.ndarray]:
    gen = np.random.default_rng(0)
    images = [gen.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(2)]
    return images, (0.1 * gen.standard_normal((2, 32000))).astype(np.float32)


def _onnx_mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("*.onnx*"))}


def test_second_build_reuses_the_export(tmp_path: Path, clean_checkout: None) -> None:
    settings = replace(SETTINGS, export_dir=tmp_path / "onnx")
    first = build_pipeline(settings)
    assert any(n.startswith("exported the MoCA trunk") for n in first.notes)
    record = json.loads((tmp_path / "onnx" / export_cache.EXPORT_RECORD).read_text())
    assert record["settings"]["preset"] == "moca_test" and record["git_commit"] == "0123456789ab"
    files = _onnx_mtimes(tmp_path / "onnx")
    assert {"audio_fp32.onnx", "vision_fp32.onnx"} <= set(files)

    second = build_pipeline(settings)
    assert any(n.startswith("reusing the ONNX export") for n in second.notes)
    assert not any(n.startswith("exported") for n in second.notes)
    weight_notes = [n for n in first.notes if n.startswith(("no --imagebind", "no --adapter"))]
    assert len(weight_notes) == 2 and set(weight_notes) <= set(second.notes)  # still told
    assert _onnx_mtimes(tmp_path / "onnx") == files  # nothing written again
    images, audio = _frames()
    for a, b in zip(
        first.pipeline.segment_batch(images, audio),
        second.pipeline.segment_batch(images, audio),
        strict=True,
    ):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.chosen == b.chosen

    other_seed = build_pipeline(replace(settings, seed=1))  # other random weights
    assert any(n.startswith("exported the MoCA trunk") for n in other_seed.notes)


def test_a_half_written_or_foreign_record_is_not_reused(
    tmp_path: Path, clean_checkout: None
) -> None:
    folder = tmp_path / "onnx"
    folder.mkdir()
    (folder / export_cache.EXPORT_RECORD).write_text("{not json")
    built = build_pipeline(replace(SETTINGS, export_dir=folder))
    assert any(n.startswith("exported the MoCA trunk") for n in built.notes)
    record = json.loads((folder / export_cache.EXPORT_RECORD).read_text())
    assert record["settings"]["seed"] == 0
    assert not export_cache.is_current(folder, {**record, "torch": "another"})


def test_dirty_checkout_is_never_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_cache, "git_commit", lambda **_: "0123456789ab+dirty")
    settings = replace(SETTINGS, export_dir=tmp_path / "onnx")
    build_pipeline(settings)
    assert not (tmp_path / "onnx" / export_cache.EXPORT_RECORD).exists()
    again = build_pipeline(settings)
    assert any(n.startswith("exported the MoCA trunk") for n in again.notes)


def test_auto_on_cpu_exports_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_checkout: None
) -> None:
    monkeypatch.setenv("MOCA_RT_CACHE_DIR", str(tmp_path / "cache"))
    built = build_pipeline(replace(SETTINGS, engine="auto"))
    assert built.notes[0].startswith("--engine auto: onnxruntime")
    (folder,) = (tmp_path / "cache" / "onnx").iterdir()
    assert (folder / export_cache.EXPORT_RECORD).is_file()
    again = build_pipeline(replace(SETTINGS, engine="auto"))
    assert any(n.startswith(f"reusing the ONNX export in {folder}") for n in again.notes)


def test_auto_rule_on_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_engine(BuildSettings())[0] == "onnxruntime"
    assert resolve_engine(BuildSettings(precision="bf16"))[0] == "torch"
    assert resolve_engine(BuildSettings(device="cuda"))[0] == "torch-compile"
    real = build.find_spec
    monkeypatch.setattr(build, "find_spec", lambda m: None if m == "onnxscript" else real(m))
    engine, why = resolve_engine(BuildSettings())
    assert engine == "torch" and "onnxscript not installed" in why


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOCA_RT_CACHE_DIR", "/somewhere")
    assert export_cache.cache_root() == Path("/somewhere")
    monkeypatch.delenv("MOCA_RT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert export_cache.cache_root() == Path("/xdg/moca_rt")
