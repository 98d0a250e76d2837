"""The trained tiny models that ship in the package: integrity, a quality floor, reproduction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from moca_rt.config import MOCA_PRESETS, SAM_PRESETS
from moca_rt.modeling.moca import MocaModel
from moca_rt.modeling.sam import load_sam
from moca_rt.pipeline import MocaPipeline, PipelineConfig
from moca_rt.proposals import ProposalConfig, SamProposals
from moca_rt.shipped import ASSETS_DIR, ShippedWeightsError, shipped_weights
from moca_rt.train.quality import pipeline_masks
from moca_rt.train.synth_eval import avsbench_scores, render_eval_set

# A world seed that neither training (0) nor the quality benchmark (20261204) uses.
FLOOR_SEED = 4242


def test_manifest_lists_every_file_with_its_sha256_and_size_budget() -> None:
    weights = shipped_weights()
    manifest = weights.manifest
    total = sum(f["bytes"] for f in manifest["files"].values())
    assert total <= 25 * 2**20
    assert set(manifest["roles"]) == {"imagebind", "adapter", "sam"}
    assert manifest["command"].startswith("python -m moca_rt.train.synth_models")
    for key in ("seed", "versions", "stages", "calibration"):
        assert key in manifest
    PipelineConfig(**weights.pipeline)  # the calibrated settings are valid pipeline settings
    ProposalConfig(**weights.proposals)


def test_a_damaged_file_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "synth"
    shutil.copytree(ASSETS_DIR, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    sam = copy / manifest["roles"]["sam"]
    data = bytearray(sam.read_bytes())
    data[-1] ^= 1
    sam.write_bytes(bytes(data))
    with pytest.raises(ShippedWeightsError, match="sha256"):
        shipped_weights(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ShippedWeightsError, match="synth_models"):
        shipped_weights(copy)


def test_shipped_models_segment_unseen_scenes() -> None:
    torch.manual_seed(0)
    weights = shipped_weights()
    model = MocaModel.from_config(
        MOCA_PRESETS["moca_synth"],
        imagebind_weights=weights.imagebind,
        adapter_weights=weights.adapter,
    )
    sam = SamProposals(
        load_sam(weights.sam, SAM_PRESETS["sam_synth"]), ProposalConfig(**weights.proposals)
    )
    pipe = MocaPipeline(model, sam, PipelineConfig(**weights.pipeline))
    data = render_eval_set("s4", 16, FLOOR_SEED, "test", 224)
    scores = avsbench_scores(pipeline_masks(pipe, data, batch=8), data.masks)
    assert scores.miou >= 0.5, scores
    silent = render_eval_set("silent", 4, FLOOR_SEED, "test", 224)
    assert not any(m.any() for m in pipeline_masks(pipe, silent))


def test_reproduce_command_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every stage of the reproduce command with a handful of steps, then a rerun that skips."""
    from moca_rt.train.synth_models import main

    assert main(["--out", str(tmp_path), "--quick"]) == 0
    out = capsys.readouterr().out
    for stage in (
        "[imagebind] step",
        "[sam] step",
        "[adaav] step",
        "[calibrate]",
        "[synth_models] done",
    ):
        assert stage in out
    folder = shipped_weights(tmp_path / "weights")
    manifest = folder.manifest
    assert manifest["command"] == f"python -m moca_rt.train.synth_models --out {tmp_path} --quick"
    assert set(manifest["stages"]) == {"imagebind", "sam", "adaav"}
    for stage in ("imagebind", "sam", "adaav"):
        assert (tmp_path / stage / "log.jsonl").is_file() and (
            tmp_path / stage / "done.json"
        ).is_file()
    assert main(["--out", str(tmp_path), "--quick"]) == 0
    rerun = capsys.readouterr().out
    assert "done already" in rerun and "[imagebind] step" not in rerun
